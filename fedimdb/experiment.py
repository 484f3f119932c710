"""An experiment is N repeats of one federated run: run, verify, retry, record, summarise.

The loop does not know which deployment it runs on: each attempt is a
:class:`~fedimdb.deploy.backend.Stack` made by the chosen backend. Every repeat's artifacts are
verified against their sha256 and kept; nothing collected is ever overwritten (a failed or corrupt
repeat folder is moved aside, not deleted)::

    results/<experiment-id>/
      experiment.json     settings, seeds, versions, per-repeat status, attempts and timings
      repeat-<k>/         the run's artifact set (run.json, rounds.csv, clients.csv, weights/, logs/)
      summary.csv         per metric and round: n, mean, std, 95 % CI
      summary.md          the same as readable tables
      *.png               accuracy and loss (mean, CI band), per-client train loss, round duration
      metrics.prom        the Prometheus metrics, as served while it ran

experiment.json is an :class:`~fedimdb.experiment_record.ExperimentRecord` (fedimdb/experiment_record.py).
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from fedimdb.artifacts import (
    ROUNDS_FILE,
    ArtifactError,
    continuable_round,
    read_csv,
    read_json,
    software_versions,
    utc_now,
    verify_run,
    write_json_atomic,
)
from fedimdb.config import ConfigError, RunConfig, Settings
from fedimdb.deploy.backend import Backend, RoundCallback, StackError, StackJob, attempt_name
from fedimdb.experiment_record import (
    EXPERIMENT_FILE,
    Attempt,
    ExperimentRecord,
    ExperimentStatus,
    Orchestrator,
    Repeat,
    RepeatStatus,
)
from fedimdb.json_model import RecordError
from fedimdb.metrics.experiment import ExperimentMetrics
from fedimdb.run_record import RECURS, RunRecord
from fedimdb.summary import write_summary

RUN_FAILURES = (StackError, ArtifactError)
"""What another attempt on a fresh stack may fix; anything else (a bug, a full disk) ends the experiment."""


console = Console(stderr=True, soft_wrap=True, highlight=False)


def repeat_dir(exp_dir: Path, k: int) -> Path:
    """The folder of repeat ``k``."""
    return exp_dir / f"repeat-{k}"


def new_experiment_dir(out: Path, cfg: RunConfig) -> Path:
    """A fresh, never reused folder: UTC time, model, strategy and a random suffix."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = out / f"{stamp}-{Path(cfg.model).name}-{cfg.strategy}-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def new_record(exp_dir: Path, settings: Settings, backend: str) -> ExperimentRecord:
    """experiment.json of a new experiment, before any repeat ran."""
    run = settings.run
    return ExperimentRecord(
        experiment_id=exp_dir.name,
        backend=backend,
        created=utc_now(),
        experiment=settings.experiment.as_dict(),
        config=run.as_dict(),
        data=settings.data.as_dict(),
        repeats={},
        seeds=[run.seed + k for k in range(settings.experiment.repeats)],
        versions=software_versions(),
    )


def set_aside(path: Path, why: str) -> str | None:
    """Move a failed or corrupt repeat folder out of the way (never delete it); its new name."""
    if not path.exists():
        return None
    n = 1
    while (aside := path.with_name(f"{path.name}.{why}-{n}")).exists():
        n += 1
    path.rename(aside)
    return aside.name


class Experiment:
    """The repeat loop: run, verify, retry, record, summarise; resumable at any point."""

    def __init__(
        self,
        exp_dir: Path,
        record: ExperimentRecord,
        settings: Settings,
        backend: Backend,
        shards: Path,
        keep_up: bool,
    ) -> None:
        self.exp_dir, self.record, self.settings = exp_dir, record, settings
        self.backend, self.shards, self.keep_up = backend, shards, keep_up
        self.metrics = ExperimentMetrics(exp_dir.name, exp_dir, settings.run.num_rounds)
        self._flower_metrics: tempfile.TemporaryDirectory | None = None  # local backend, metrics served

    def save(self) -> None:
        """Rewrite experiment.json atomically."""
        write_json_atomic(self.exp_dir / EXPERIMENT_FILE, self.record.to_json())

    def _status(self, k: int) -> RepeatStatus | None:
        """Repeat ``k``'s status; None before it ran."""
        rep = self.record.repeats.get(str(k))
        return None if rep is None else rep.status

    def run(self) -> int:
        """All repeats; exit code 0 only when every repeat is verified."""
        n = self.settings.experiment.repeats
        self._stop_leftovers()
        verified = [k for k in range(n) if self._still_verified(k)]
        self._start_metrics(n, len(verified))
        self.record.status = ExperimentStatus.RUNNING
        self.record.orchestrator = Orchestrator(os.getpid(), socket.gethostname())
        self.save()
        stopped = self._run_repeats(n, verified)
        done = {k: repeat_dir(self.exp_dir, k) for k in range(n) if self._status(k) == RepeatStatus.VERIFIED}
        if done:
            write_summary(self.exp_dir, done)
        status = (
            ExperimentStatus.COMPLETED
            if len(done) == n
            else (ExperimentStatus.STOPPED if stopped else ExperimentStatus.INCOMPLETE)
        )
        self.record.status, self.record.ended = status, utc_now()
        self.save()
        self.metrics.flush()
        self.metrics.wait_for_last_scrape()
        self.metrics.stop_serving()
        if self._flower_metrics is not None:
            self._flower_metrics.cleanup()
        self._print_table(n)
        console.print(f"experiment {self.exp_dir.name}: {len(done)}/{n} repeats verified; results in {self.exp_dir}")
        if len(done) < n:
            console.print(
                f"resume with: python orchestrate.py --out {self.exp_dir.parent} --resume {self.exp_dir.name}"
            )
        return 0 if len(done) == n else 1

    def _start_metrics(self, total: int, verified: int) -> None:
        """Serve the metrics; with the local backend, also those the ServerApp and ClientApps record."""
        self.metrics.start(total, verified)
        port = self.settings.experiment.metrics_port
        try:
            self.metrics.serve(port)
        except OSError as exc:
            console.print(
                f"notice: metrics not served on port {port} ({exc}); they are still written to {self.metrics.path}"
            )
            return
        if port and self.backend.process_metrics:
            self._flower_metrics = tempfile.TemporaryDirectory(prefix="fedimdb-metrics-")
            self.metrics.collect_from(Path(self._flower_metrics.name))

    def _run_repeats(self, n: int, verified: list[int]) -> bool:
        """Every repeat not verified yet, with progress bars; True when a failure stopped the loop."""
        for k in verified:
            console.print(f"repeat {k}: verified earlier, kept as it is")
        rounds_total = self.settings.run.num_rounds
        columns: tuple[ProgressColumn, ...] = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        columns += (TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            all_repeats = progress.add_task("repeats", total=n, completed=len(verified))
            rounds = progress.add_task("rounds of this repeat", total=rounds_total)

            def on_round(r: int) -> None:
                progress.update(rounds, completed=r)
                self.metrics.round_done(r)

            for k in (k for k in range(n) if k not in verified):
                progress.reset(rounds, total=rounds_total)
                if self._run_repeat(k, on_round):
                    progress.advance(all_repeats)
                elif self.settings.experiment.on_failure == "stop":
                    console.print(f"repeat {k} failed every attempt; stopping (--on-failure continue goes on)")
                    return True
        return False

    def _stop_leftovers(self) -> None:
        """An attempt still marked running had its orchestrator killed: stop the stack it left, mark it abandoned."""
        for k, rep in self.record.repeats.items():
            if rep.status != RepeatStatus.RUNNING or not rep.attempts:
                continue
            entry = rep.attempts[-1]
            said = self.backend.stop_leftover(entry.stack or {}, repeat_dir(self.exp_dir, int(k)))
            entry.status, entry.error = RepeatStatus.ABANDONED, "the orchestrator was killed during this attempt"
            entry.leftovers = said
            rep.status = RepeatStatus.ABANDONED
            console.print(f"repeat {k} attempt {entry.attempt}: its orchestrator was killed; {said}")
        self.save()

    def _still_verified(self, k: int) -> bool:
        """A repeat recorded as verified whose folder still verifies; a corrupt one is set aside."""
        rep = self.record.repeats.get(str(k))
        if rep is None or rep.status != RepeatStatus.VERIFIED:
            return False
        try:
            verify_run(repeat_dir(self.exp_dir, k))
            return True
        except ArtifactError as exc:
            moved = set_aside(repeat_dir(self.exp_dir, k), RepeatStatus.CORRUPT)
            console.print(f"repeat {k}: no longer verifies ({exc}); moved to {moved}, redoing it")
            rep.status, rep.error, rep.moved_to = RepeatStatus.CORRUPT, str(exc), moved
            self.save()
            return False

    def _run_repeat(self, k: int, on_round: RoundCallback) -> bool:
        """Up to 1 + retries attempts at repeat ``k``, each continuing the last one's archived rounds; True once
        one is verified."""
        seed = self.settings.run.seed + k
        rep = self.record.repeats.setdefault(str(k), Repeat(seed))
        for attempt in range(len(rep.attempts) + 1, len(rep.attempts) + self.settings.experiment.retries + 2):
            moved = set_aside(repeat_dir(self.exp_dir, k), "unfinished")  # left by a killed orchestrator
            if moved:
                rep.set_aside.append(moved)
                if rep.attempts and rep.attempts[-1].set_aside is None:
                    rep.attempts[-1].set_aside = moved
            entry = Attempt(attempt, utc_now())
            cfg = self._continuing(rep, entry)
            rep.attempts.append(entry)
            if self._attempt(k, entry, cfg, rep, on_round):
                return True
            if RECURS in (entry.error or ""):
                console.print(f"repeat {k}: not retried, another attempt would fail the same way")
                return False
        return False

    def _continuing(self, rep: Repeat, entry: Attempt) -> RunConfig:
        """The repeat's run config for attempt ``entry``: continuing the last attempt's folder after its last
        archived round, where the backend can and that folder verifies."""
        values = {**self.settings.run.as_dict(), "seed": rep.seed, "continue-from": ""}
        last = rep.attempts[-1].set_aside if rep.attempts else None
        if self.backend.continues and last:
            try:
                after = continuable_round(verify_run(self.exp_dir / last, require_completed=False))
            except ArtifactError as exc:
                console.print(f"{last}: not continued, it does not verify ({exc})", markup=False)
                after = 0
            if 0 < after < self.settings.run.num_rounds:
                values["continue-from"] = str((self.exp_dir / last).resolve())
                entry.continued_from, entry.continued_after_round = last, after
        return RunConfig.from_mapping(values)

    def _attempt(self, k: int, entry: Attempt, cfg: RunConfig, rep: Repeat, on_round: RoundCallback) -> bool:
        """One attempt on a fresh stack; records its outcome in experiment.json."""
        path = repeat_dir(self.exp_dir, k)
        attempt = entry.attempt
        rep.status = RepeatStatus.RUNNING
        self.save()
        self.metrics.repeat_started(k)
        after = (
            f", continuing {entry.continued_from} after round {entry.continued_after_round}"
            if cfg.continue_from
            else ""
        )
        console.print(f"repeat {k} (seed {cfg.seed}), attempt {attempt}: backend {self.backend.name}{after}")
        last = k == self.settings.experiment.repeats - 1
        flower_metrics = Path(self._flower_metrics.name) if self._flower_metrics else None
        job = StackJob(
            cfg,
            self.settings.data,
            self.shards,
            path,
            attempt_name(self.exp_dir.name, k, attempt),
            keep_up=self.keep_up and last,
            nodes=self.settings.experiment,
            metrics_dir=flower_metrics,
        )
        t0 = time.monotonic()
        try:
            with self.backend.make(job) as stack:

                def keep(handle: dict[str, Any]) -> None:  # for a --resume after this orchestrator is killed
                    entry.stack = handle
                    self.save()

                keep(stack.handle())
                stack.on_handle = keep
                stack.run(on_round)
                stack.collect()
            meta = verify_run(path)
        except RUN_FAILURES as exc:
            entry.status, entry.error, entry.seconds = RepeatStatus.FAILED, str(exc), round(time.monotonic() - t0, 1)
            entry.set_aside = set_aside(path, RepeatStatus.FAILED)
            rep.status = RepeatStatus.FAILED
            self.save()
            self.metrics.repeat_failed()
            console.print(f"repeat {k} attempt {attempt} failed: {exc}", style="red", markup=False)
            return False
        except BaseException:
            entry.status, entry.seconds = RepeatStatus.INTERRUPTED, round(time.monotonic() - t0, 1)
            rep.status = RepeatStatus.INTERRUPTED
            self.save()
            raise
        self._record_verified(k, rep, entry, meta, round(time.monotonic() - t0, 1))
        return True

    def _record_verified(self, k: int, rep: Repeat, entry: Attempt, meta: RunRecord, seconds: float) -> None:
        final = read_csv(repeat_dir(self.exp_dir, k) / ROUNDS_FILE)[-1]
        accuracy, loss = float(final["central_accuracy"]), float(final["central_loss"])
        entry.status, entry.seconds = RepeatStatus.VERIFIED, seconds
        rep.status, rep.seconds, rep.run_id = RepeatStatus.VERIFIED, seconds, meta.run_id
        rep.final_accuracy, rep.final_loss = accuracy, loss
        self.save()
        self.metrics.repeat_finished(k, seconds, accuracy, loss)

    def _print_table(self, n: int) -> None:
        table = Table(title=f"experiment {self.exp_dir.name}")
        for col in ("repeat", "seed", "status", "attempts", "seconds", "final accuracy", "final loss"):
            table.add_column(col)
        for k in range(n):
            rep = self.record.repeats.get(str(k)) or Repeat(self.settings.run.seed + k)
            acc, loss = rep.final_accuracy, rep.final_loss
            table.add_row(
                str(k),
                str(rep.seed),
                rep.status or "not run",
                str(len(rep.attempts)),
                "" if rep.seconds is None else str(rep.seconds),
                f"{acc:.4f}" if acc is not None else "",
                f"{loss:.4f}" if loss is not None else "",
            )
        console.print(table)


def load_record(exp_dir: Path) -> ExperimentRecord:
    """An existing experiment's experiment.json, read and checked field by field (ConfigError if damaged)."""
    path = exp_dir / EXPERIMENT_FILE
    try:
        return ExperimentRecord.from_json(read_json(path))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem = str(exc) if isinstance(exc, RecordError) else f"it cannot be read as JSON ({exc})"
    raise ConfigError(
        f"--resume: {path} is damaged: {problem}. Restore it from a backup, or start a new experiment with "
        f"the same settings; the repeats' folders in {exp_dir} are kept either way"
    )
