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

experiment.json's keys are kebab-case, like run.json's.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from datetime import datetime, timezone
from enum import StrEnum
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
    RUN_ID,
    STATUS,
    ArtifactError,
    read_csv,
    read_json,
    software_versions,
    utc_now,
    verify_run,
    write_json_atomic,
)
from fedimdb.config import ConfigError, RunConfig, Settings
from fedimdb.deploy.backend import Backend, RoundCallback, StackError, StackJob, attempt_name
from fedimdb.metrics.experiment import ExperimentMetrics
from fedimdb.summary import write_summary

EXPERIMENT_FILE = "experiment.json"
RUN_FAILURES = (StackError, ArtifactError)
"""What another attempt on a fresh stack may fix; anything else (a bug, a full disk) ends the experiment."""
# experiment.json keys and repeat statuses.
EXPERIMENT_ID, REPEATS, ATTEMPTS, STACK, ORCHESTRATOR = "experiment-id", "repeats", "attempts", "stack", "orchestrator"
BACKEND, EXPERIMENT_SETTINGS, RUN_SETTINGS, DATA_SETTINGS = "backend", "experiment", "config", "data"
RECORD_SCHEMA: dict[str, type] = {
    EXPERIMENT_ID: str,
    BACKEND: str,
    EXPERIMENT_SETTINGS: dict,
    RUN_SETTINGS: dict,
    DATA_SETTINGS: dict,
    REPEATS: dict,
}
"""What every experiment.json holds, and of which JSON type: what --resume reads before anything else."""


class ExperimentStatus(StrEnum):
    """The experiment's status in experiment.json."""

    RUNNING = "running"
    COMPLETED = "completed"  # every repeat verified
    STOPPED = "stopped"  # a repeat failed and --on-failure stop ended the experiment
    INCOMPLETE = "incomplete"  # some repeats are not verified: --resume runs them
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    FAILED = "failed"  # the orchestrator itself failed


class RepeatStatus(StrEnum):
    """A repeat's status in experiment.json, and each of its attempts'."""

    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CORRUPT = "corrupt"  # verified once, its artifacts no longer match their hashes: set aside, run again
    ABANDONED = "abandoned"  # its orchestrator was killed mid-attempt; the stack it left was stopped on --resume


console = Console(stderr=True, soft_wrap=True, highlight=False)


def repeat_dir(exp_dir: Path, k: int) -> Path:
    """The folder of repeat ``k``."""
    return exp_dir / f"repeat-{k}"


def new_experiment_dir(out: Path, cfg: RunConfig) -> Path:
    """A fresh, never reused folder: UTC time, model, strategy and a random suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = out / f"{stamp}-{Path(cfg.model).name}-{cfg.strategy}-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def new_record(exp_dir: Path, settings: Settings, backend: str) -> dict[str, Any]:
    """experiment.json of a new experiment, before any repeat ran."""
    run = settings.run
    return {
        EXPERIMENT_ID: exp_dir.name,
        BACKEND: backend,
        "created": utc_now(),
        EXPERIMENT_SETTINGS: settings.experiment.as_dict(),
        RUN_SETTINGS: run.as_dict(),
        DATA_SETTINGS: settings.data.as_dict(),
        "seeds": [run.seed + k for k in range(settings.experiment.repeats)],
        "versions": software_versions(),
        REPEATS: {},
    }


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
        self, exp_dir: Path, record: dict, settings: Settings, backend: Backend, shards: Path, keep_up: bool
    ) -> None:
        self.exp_dir, self.record, self.settings = exp_dir, record, settings
        self.backend, self.shards, self.keep_up = backend, shards, keep_up
        self.metrics = ExperimentMetrics(exp_dir.name, exp_dir, settings.run.num_rounds)
        self._flower_metrics: tempfile.TemporaryDirectory | None = None  # local backend, metrics served

    def save(self) -> None:
        """Rewrite experiment.json atomically."""
        write_json_atomic(self.exp_dir / EXPERIMENT_FILE, self.record)

    def _repeat(self, k: int) -> dict[str, Any]:
        return self.record[REPEATS].get(str(k), {})

    def run(self) -> int:
        """All repeats; exit code 0 only when every repeat is verified."""
        n = self.settings.experiment.repeats
        self._stop_leftovers()
        verified = [k for k in range(n) if self._still_verified(k)]
        self._start_metrics(n, len(verified))
        self.record.update(
            {STATUS: ExperimentStatus.RUNNING, ORCHESTRATOR: {"pid": os.getpid(), "host": socket.gethostname()}}
        )
        self.save()
        stopped = self._run_repeats(n, verified)
        done = {
            k: repeat_dir(self.exp_dir, k) for k in range(n) if self._repeat(k).get(STATUS) == RepeatStatus.VERIFIED
        }
        if done:
            write_summary(self.exp_dir, done)
        status = (
            ExperimentStatus.COMPLETED
            if len(done) == n
            else (ExperimentStatus.STOPPED if stopped else ExperimentStatus.INCOMPLETE)
        )
        self.record.update(status=status, ended=utc_now())
        self.save()
        self.metrics.flush()
        self.metrics.wait_for_last_scrape()
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
        for k, rep in self.record[REPEATS].items():
            if rep.get(STATUS) != RepeatStatus.RUNNING or not rep.get(ATTEMPTS):
                continue
            entry = rep[ATTEMPTS][-1]
            said = self.backend.stop_leftover(entry.get(STACK, {}))
            entry.update(
                {
                    STATUS: RepeatStatus.ABANDONED,
                    "error": "the orchestrator was killed during this attempt",
                    "leftovers": said,
                }
            )
            rep[STATUS] = RepeatStatus.ABANDONED
            console.print(f"repeat {k} attempt {entry['attempt']}: its orchestrator was killed; {said}")
        self.save()

    def _still_verified(self, k: int) -> bool:
        """A repeat recorded as verified whose folder still verifies; a corrupt one is set aside."""
        rep = self._repeat(k)
        if rep.get(STATUS) != RepeatStatus.VERIFIED:
            return False
        try:
            verify_run(repeat_dir(self.exp_dir, k))
            return True
        except ArtifactError as exc:
            moved = set_aside(repeat_dir(self.exp_dir, k), RepeatStatus.CORRUPT)
            console.print(f"repeat {k}: no longer verifies ({exc}); moved to {moved}, redoing it")
            rep.update({STATUS: RepeatStatus.CORRUPT, "error": str(exc), "moved-to": moved})
            self.save()
            return False

    def _run_repeat(self, k: int, on_round: RoundCallback) -> bool:
        """Up to 1 + retries attempts at repeat ``k``; True once one is verified."""
        seed = self.settings.run.seed + k
        cfg = RunConfig.from_mapping({**self.settings.run.as_dict(), "seed": seed})
        rep = self.record[REPEATS].setdefault(str(k), {"seed": seed, ATTEMPTS: []})
        for attempt in range(1, self.settings.experiment.retries + 2):
            moved = set_aside(repeat_dir(self.exp_dir, k), "unfinished")  # left by a killed orchestrator
            if moved:
                rep.setdefault("set-aside", []).append(moved)
            if self._attempt(k, attempt, cfg, rep, on_round):
                return True
        return False

    def _attempt(self, k: int, attempt: int, cfg: RunConfig, rep: dict[str, Any], on_round: RoundCallback) -> bool:
        """One attempt on a fresh stack; records its outcome in experiment.json."""
        path = repeat_dir(self.exp_dir, k)
        entry = {"attempt": attempt, "started": utc_now()}
        rep[ATTEMPTS].append(entry)
        rep[STATUS] = RepeatStatus.RUNNING
        self.save()
        self.metrics.repeat_started(k)
        console.print(f"repeat {k} (seed {cfg.seed}), attempt {attempt}: backend {self.backend.name}")
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
                    entry[STACK] = handle
                    self.save()

                keep(stack.handle())
                stack.on_handle = keep
                stack.run(on_round)
                stack.collect()
            meta = verify_run(path)
        except RUN_FAILURES as exc:
            entry.update({STATUS: RepeatStatus.FAILED, "error": str(exc), "seconds": round(time.monotonic() - t0, 1)})
            entry["set-aside"] = set_aside(path, RepeatStatus.FAILED)
            rep[STATUS] = RepeatStatus.FAILED
            self.save()
            self.metrics.repeat_failed()
            console.print(f"repeat {k} attempt {attempt} failed: {exc}", style="red", markup=False)
            return False
        except BaseException:
            entry.update({STATUS: RepeatStatus.INTERRUPTED, "seconds": round(time.monotonic() - t0, 1)})
            rep[STATUS] = RepeatStatus.INTERRUPTED
            self.save()
            raise
        self._record_verified(k, rep, entry, meta, round(time.monotonic() - t0, 1))
        return True

    def _record_verified(self, k: int, rep: dict, entry: dict, meta: dict, seconds: float) -> None:
        final = read_csv(repeat_dir(self.exp_dir, k) / ROUNDS_FILE)[-1]
        accuracy, loss = float(final["central_accuracy"]), float(final["central_loss"])
        entry.update({STATUS: RepeatStatus.VERIFIED, "seconds": seconds})
        rep.update({STATUS: RepeatStatus.VERIFIED, "seconds": seconds, "run-id": meta.get(RUN_ID)})
        rep.update({"final-accuracy": accuracy, "final-loss": loss})
        self.save()
        self.metrics.repeat_finished(k, seconds, accuracy, loss)

    def _print_table(self, n: int) -> None:
        table = Table(title=f"experiment {self.exp_dir.name}")
        for col in ("repeat", "seed", "status", "attempts", "seconds", "final accuracy", "final loss"):
            table.add_column(col)
        for k in range(n):
            rep = self._repeat(k)
            acc, loss = rep.get("final-accuracy"), rep.get("final-loss")
            table.add_row(
                str(k),
                str(rep.get("seed", self.settings.run.seed + k)),
                rep.get(STATUS, "not run"),
                str(len(rep.get(ATTEMPTS, []))),
                str(rep.get("seconds", "")),
                f"{acc:.4f}" if acc is not None else "",
                f"{loss:.4f}" if loss is not None else "",
            )
        console.print(table)


def load_record(exp_dir: Path) -> dict[str, Any]:
    """An existing experiment's experiment.json, checked against :data:`RECORD_SCHEMA` (ConfigError if not)."""
    path = exp_dir / EXPERIMENT_FILE
    try:
        record = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem: str | None = f"it cannot be read as JSON ({exc})"
    else:
        problem = record_problem(record)
    if problem:
        raise ConfigError(
            f"--resume: {path} is damaged: {problem}. Restore it from a backup, or start a new experiment with "
            f"the same settings; the repeats' folders in {exp_dir} are kept either way"
        )
    return record


def record_problem(record: Any) -> str | None:
    """What is wrong with an experiment.json's contents, or None."""
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not an object"
    for key, kind in RECORD_SCHEMA.items():
        if not isinstance(record.get(key), kind):
            return f"{key!r} is {'missing' if key not in record else type(record[key]).__name__}, not a JSON {kind.__name__}"
    bad = [
        k
        for k, rep in record[REPEATS].items()
        if not isinstance(rep, dict) or not isinstance(rep.get(ATTEMPTS, []), list)
    ]
    return f"repeats {', '.join(bad)} are not objects with a list of attempts" if bad else None
