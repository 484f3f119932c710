"""``python orchestrate.py``: an experiment is N repeats of one federated run.

Each repeat k (seed = base seed + k) runs on its own stack — a Compose project (backend
``docker``) or local processes (backend ``local``) — and its artifacts are collected, verified
against their sha256 and kept. Every invocation makes a new experiment folder; ``--resume ID``
finishes one, skipping repeats that still verify. Nothing collected is ever overwritten: a
failed or corrupt repeat folder is moved aside, not deleted::

    results/<experiment-id>/
      experiment.json     settings, seeds, versions, per-repeat status, attempts and timings
      repeat-<k>/         the run's artifact set (run.json, rounds.csv, clients.csv, weights/, logs/)
      summary.csv         per metric and round: n, mean, std, 95 % CI
      summary.md          the same as readable tables
      *.png               accuracy and loss (mean, CI band), per-client train loss, round duration
      metrics.prom        the Prometheus metrics, as served while it ran
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fedimdb.artifacts import (
    ArtifactError,
    read_csv,
    read_json,
    software_versions,
    utc_now,
    verify_run,
    write_json_atomic,
)
from fedimdb.config import (
    MODEL_PRESETS,
    STRATEGIES,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    RunConfig,
    check_clients_fit,
)
from fedimdb.data import ShardError, prepare_shards, verify_shards
from fedimdb.deploy import flwr_cli
from fedimdb.deploy.compose import COMPOSE_FILE
from fedimdb.deploy.docker_backend import ComposeRunError, compose_project_name, docker_problem, run_compose
from fedimdb.deploy.local import LocalFederation
from fedimdb.metrics import ExperimentMetrics
from fedimdb.summary import write_summary

CONNECTION = "fedimdb-local"
FLOWER_COMMANDS = ("flwr", "flower-superlink", "flower-supernode")
EXPERIMENT_FILE = "experiment.json"
RUN_FAILURES = (flwr_cli.FlowerRunError, ArtifactError, ComposeRunError, RuntimeError, OSError)
console = Console(stderr=True, soft_wrap=True, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    """Options override .env / FEDIMDB_* values, which override the defaults in fedimdb/config.py."""
    p = argparse.ArgumentParser(
        prog="orchestrate.py",
        description="Run a federated IMDB experiment (N repeats) on real Flower deployments, collect, "
        "verify and summarise it. Options override .env.",
    )
    p.add_argument("--repeats", type=int, help="repeats of the run; repeat k uses seed + k (FEDIMDB_REPEATS)")
    p.add_argument(
        "--backend",
        choices=("auto", "docker", "local"),
        help="docker: one Compose stack per repeat; local: SuperLink and SuperNodes as local processes; "
        "auto (default): docker when a Docker daemon answers (FEDIMDB_BACKEND)",
    )
    p.add_argument("--rounds", dest="num_rounds", type=int, help="federated rounds (FEDIMDB_NUM_ROUNDS)")
    p.add_argument("--clients", dest="num_clients", type=int, help="clients / SuperNodes (FEDIMDB_NUM_CLIENTS)")
    p.add_argument("--model", help=f"preset {'|'.join(MODEL_PRESETS)}, local directory or hub id (FEDIMDB_MODEL)")
    p.add_argument("--strategy", choices=STRATEGIES, help="aggregation strategy (FEDIMDB_STRATEGY)")
    p.add_argument("--seed", type=int, help="base seed (FEDIMDB_SEED)")
    p.add_argument("--data-source", help="hub id or local folder of train/test Parquet (FEDIMDB_DATA_SOURCE)")
    p.add_argument("--partitioner", choices=("iid", "dirichlet"), help="FEDIMDB_PARTITIONER")
    p.add_argument("--alpha", type=float, help="Dirichlet concentration (FEDIMDB_ALPHA)")
    p.add_argument("--data-dir", help="where shards are prepared / reused (FEDIMDB_DATA_DIR)")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run setting, e.g. --set max-steps=5 (repeatable)",
    )
    p.add_argument("--retries", type=int, help="further attempts for a failed repeat (FEDIMDB_RETRIES)")
    p.add_argument(
        "--on-failure", choices=("stop", "continue"), help="after a repeat failed every attempt (FEDIMDB_ON_FAILURE)"
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port, 0 = off (FEDIMDB_METRICS_PORT)")
    p.add_argument(
        "--resume",
        metavar="EXPERIMENT_ID",
        help="finish that experiment in --out: verified repeats are kept, the others redone",
    )
    p.add_argument("--keep-up", action="store_true", help="docker: leave the last repeat's stack up for inspection")
    p.add_argument(
        "--compose-file", type=Path, default=COMPOSE_FILE, help="docker: the stack (default: docker-compose.yml)"
    )
    p.add_argument("--out", type=Path, default=Path("results"), help="results root (default: results)")
    p.add_argument("--env-file", type=Path, default=Path(".env"), help="settings file (default: .env)")
    return p


def load_configs(args: argparse.Namespace) -> tuple[RunConfig, DataConfig, ExperimentConfig]:
    """The three configurations, validated; data-dir is shared by run and data."""
    run_overrides: dict[str, Any] = {
        k: getattr(args, k) for k in ("num_rounds", "num_clients", "model", "strategy", "seed", "data_dir")
    }
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write it as KEY=VALUE, e.g. --set max-steps=5")
        run_overrides[key.strip()] = value
    exp_cfg = ExperimentConfig.from_env(
        args.env_file,
        overrides={k: getattr(args, k) for k in ("backend", "repeats", "retries", "on_failure", "metrics_port")},
    )
    data_cfg = DataConfig.from_env(
        args.env_file, overrides={k: getattr(args, k) for k in ("data_source", "partitioner", "alpha", "data_dir")}
    )
    run_cfg = RunConfig.from_env(args.env_file, overrides={**run_overrides, "data_dir": data_cfg.data_dir})
    check_clients_fit(run_cfg, data_cfg.num_partitions)
    return run_cfg, data_cfg, exp_cfg


def resume_configs(exp_dir: Path, args: argparse.Namespace) -> tuple[RunConfig, DataConfig, ExperimentConfig, dict]:
    """An existing experiment's recorded settings; retries/on-failure/metrics-port may change."""
    if not (exp_dir / EXPERIMENT_FILE).is_file():
        known = (
            sorted(p.name for p in exp_dir.parent.glob("*/") if (p / EXPERIMENT_FILE).is_file())
            if exp_dir.parent.is_dir()
            else []
        )
        raise ConfigError(
            f"--resume: no experiment {exp_dir.name!r} in {exp_dir.parent}; known: {', '.join(known[-5:]) or 'none'}"
        )
    record = read_json(exp_dir / EXPERIMENT_FILE)
    recorded = dict(record["experiment"])
    recorded.update(
        {
            k.replace("_", "-"): v
            for k in ("retries", "on_failure", "metrics_port")
            if (v := getattr(args, k)) is not None
        }
    )
    return (
        RunConfig.from_mapping(record["config"]),
        DataConfig.from_mapping(record["data"]),
        ExperimentConfig.from_mapping(recorded),
        record,
    )


def choose_backend(requested: str, compose_file: Path) -> str:
    """docker or local; ``auto`` falls back to local (with a notice) when Docker cannot run."""
    if requested == "local":
        missing = [c for c in FLOWER_COMMANDS if shutil.which(c) is None]
        if missing:
            raise ConfigError(
                f"backend local needs {', '.join(missing)} on PATH; install the project: pip install -e ."
            )
        return "local"
    problem = docker_problem(compose_file)
    if problem is None:
        return "docker"
    if requested == "docker":
        raise ConfigError(f"--backend docker: {problem}")
    console.print(f"notice: backend auto falls back to local processes: {problem}")
    return choose_backend("local", compose_file)


def process_env(cfg: RunConfig, flwr_home: Path) -> dict[str, str]:
    """Environment of every local Flower process: own FLWR_HOME, no telemetry, threads shared fairly."""
    threads = cfg.torch_threads or max(1, (os.cpu_count() or 1) // cfg.num_clients)
    return {
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }


def run_local(cfg: RunConfig, shards: Path, run_dir: Path, on_round) -> None:
    """One run on a LocalFederation, its artifacts written straight into ``run_dir``."""
    with tempfile.TemporaryDirectory(prefix="fedimdb-flwr-") as tmp:
        env = process_env(cfg, Path(tmp))
        with LocalFederation(shards, cfg.num_clients, run_dir / "logs", env) as fed:
            flwr_cli.write_connection(Path(tmp), CONNECTION, fed.control_address)
            console.print(f"{cfg.num_clients} SuperNodes connect over gRPC to the SuperLink at {fed.fleet_address}")
            run_config = {**cfg.as_dict(), "data-dir": str(shards.resolve()), "output-dir": str(run_dir.resolve())}
            flwr_cli.run_to_completion(
                CONNECTION, run_config, env, log=console.print, check=fed.check_alive, on_round=on_round
            )


class Experiment:
    """The repeat loop: run, verify, retry, record, summarise; resumable at any point."""

    def __init__(
        self,
        exp_dir: Path,
        record: dict,
        run_cfg: RunConfig,
        data_cfg: DataConfig,
        exp_cfg: ExperimentConfig,
        backend: str,
        shards: Path,
        keep_up: bool,
        compose_file: Path,
    ) -> None:
        self.exp_dir, self.record, self.run_cfg, self.data_cfg = exp_dir, record, run_cfg, data_cfg
        self.exp_cfg, self.backend, self.shards, self.keep_up = exp_cfg, backend, shards, keep_up
        self.compose_file = compose_file
        self.metrics = ExperimentMetrics(exp_dir.name, exp_dir)

    def save(self) -> None:
        write_json_atomic(self.exp_dir / EXPERIMENT_FILE, self.record)

    def repeat_dir(self, k: int) -> Path:
        return self.exp_dir / f"repeat-{k}"

    def _set_aside(self, path: Path, why: str) -> str | None:
        """Move a failed or corrupt repeat folder out of the way; never delete it."""
        if not path.exists():
            return None
        n = 1
        while (aside := path.with_name(f"{path.name}.{why}-{n}")).exists():
            n += 1
        path.rename(aside)
        return aside.name

    def run(self) -> int:
        """All repeats; exit code 0 only when every repeat is verified."""
        n = self.exp_cfg.repeats
        reps = self.record["repeats"]
        verified = [k for k in range(n) if self._still_verified(k)]
        self.metrics.start(n, len(verified))
        try:
            self.metrics.serve(self.exp_cfg.metrics_port)
        except OSError as exc:
            console.print(
                f"notice: metrics not served on port {self.exp_cfg.metrics_port} ({exc}); "
                f"they are still written to {self.metrics.path}"
            )
        self.record["status"] = "running"
        self.save()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        stopped = False
        with Progress(*columns, console=console, transient=False) as progress:
            all_repeats = progress.add_task("repeats", total=n, completed=len(verified))
            rounds = progress.add_task("rounds of this repeat", total=self.run_cfg.num_rounds)
            for k in range(n):
                if k in verified:
                    console.print(f"repeat {k}: verified earlier, kept as it is")
                    continue
                progress.reset(rounds, total=self.run_cfg.num_rounds)
                ok = self._run_repeat(k, lambda r: (progress.update(rounds, completed=r), self.metrics.round_done(r)))
                if ok:
                    progress.advance(all_repeats)
                elif self.exp_cfg.on_failure == "stop":
                    stopped = True
                    console.print(f"repeat {k} failed every attempt; stopping (--on-failure continue goes on)")
                    break
        done = {k: self.repeat_dir(k) for k in range(n) if reps.get(str(k), {}).get("status") == "verified"}
        if done:
            write_summary(self.exp_dir, done)
        self.record.update(
            status="completed" if len(done) == n else ("stopped" if stopped else "incomplete"), ended=utc_now()
        )
        self.save()
        self.metrics.flush()
        self._print_table(n)
        console.print(f"experiment {self.exp_dir.name}: {len(done)}/{n} repeats verified; results in {self.exp_dir}")
        if len(done) < n:
            console.print(
                f"resume with: python orchestrate.py --out {self.exp_dir.parent} --resume {self.exp_dir.name}"
            )
        return 0 if len(done) == n else 1

    def _still_verified(self, k: int) -> bool:
        """A repeat recorded as verified whose folder still verifies; a corrupt one is set aside."""
        rep = self.record["repeats"].get(str(k))
        path = self.repeat_dir(k)
        if rep is None or rep.get("status") != "verified":
            return False
        try:
            verify_run(path)
            return True
        except ArtifactError as exc:
            moved = self._set_aside(path, "corrupt")
            console.print(f"repeat {k}: no longer verifies ({exc}); moved to {moved}, redoing it")
            rep.update(status="corrupt", error=str(exc), moved_to=moved)
            self.save()
            return False

    def _run_repeat(self, k: int, on_round) -> bool:
        seed = self.run_cfg.seed + k
        cfg = RunConfig.from_mapping({**self.run_cfg.as_dict(), "seed": seed})
        rep = self.record["repeats"].setdefault(str(k), {"seed": seed, "attempts": []})
        path = self.repeat_dir(k)
        for attempt in range(1, self.exp_cfg.retries + 2):
            moved = self._set_aside(path, "unfinished")  # left by a killed orchestrator: kept, not reused
            if moved:
                rep.setdefault("set-aside", []).append(moved)
            entry = {"attempt": attempt, "started": utc_now()}
            rep["attempts"].append(entry)
            rep["status"] = "running"
            self.save()
            self.metrics.repeat_started(k)
            console.print(f"repeat {k} (seed {seed}), attempt {attempt}: backend {self.backend}")
            t0 = time.monotonic()
            try:
                if self.backend == "docker":
                    last = k == self.exp_cfg.repeats - 1
                    run_compose(
                        cfg,
                        self.data_cfg,
                        self.shards,
                        path,
                        project=compose_project_name(self.exp_dir.name, k, attempt),
                        keep_up=self.keep_up and last,
                        on_round=on_round,
                        log=console.print,
                        compose_file=self.compose_file,
                    )
                else:
                    run_local(cfg, self.shards, path, on_round)
                meta = verify_run(path)
            except RUN_FAILURES as exc:
                entry.update(status="failed", error=str(exc), seconds=round(time.monotonic() - t0, 1))
                entry["set-aside"] = self._set_aside(path, "failed")
                rep["status"] = "failed"
                self.save()
                self.metrics.repeat_failed()
                console.print(f"repeat {k} attempt {attempt} failed: {exc}", style="red", markup=False)
                continue
            except BaseException:
                entry.update(status="interrupted", seconds=round(time.monotonic() - t0, 1))
                rep["status"] = "interrupted"
                self.save()
                raise
            seconds = round(time.monotonic() - t0, 1)
            final = read_csv(path / "rounds.csv")[-1]
            entry.update(status="verified", seconds=seconds)
            rep.update(
                status="verified",
                seconds=seconds,
                run_id=meta.get("run-id"),
                final_accuracy=float(final["central_accuracy"]),
                final_loss=float(final["central_loss"]),
            )
            self.save()
            self.metrics.repeat_finished(k, seconds, rep["final_accuracy"], rep["final_loss"])
            return True
        return False

    def _print_table(self, n: int) -> None:
        table = Table(title=f"experiment {self.exp_dir.name}")
        for col in ("repeat", "seed", "status", "attempts", "seconds", "final accuracy", "final loss"):
            table.add_column(col)
        for k in range(n):
            rep = self.record["repeats"].get(str(k), {})
            acc, loss = rep.get("final_accuracy"), rep.get("final_loss")
            table.add_row(
                str(k),
                str(rep.get("seed", self.run_cfg.seed + k)),
                rep.get("status", "not run"),
                str(len(rep.get("attempts", []))),
                str(rep.get("seconds", "")),
                f"{acc:.4f}" if acc is not None else "",
                f"{loss:.4f}" if loss is not None else "",
            )
        console.print(table)


def new_experiment_dir(out: Path, cfg: RunConfig) -> Path:
    """A fresh, never reused folder: UTC time, model, strategy and a random suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = out / f"{stamp}-{Path(cfg.model).name}-{cfg.strategy}-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def _interrupt_on_sigterm() -> None:
    """SIGTERM (e.g. docker stop, a CI timeout) tears down like Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point of orchestrate.py: validate everything, then run or resume the experiment."""
    args = build_parser().parse_args(argv)
    try:
        if args.resume:
            exp_dir = args.out / args.resume
            run_cfg, data_cfg, exp_cfg, record = resume_configs(exp_dir, args)
        else:
            run_cfg, data_cfg, exp_cfg = load_configs(args)
            exp_dir, record = None, None
        backend = choose_backend(record["backend"] if record else exp_cfg.backend, args.compose_file)
        shards = prepare_shards(data_cfg, log=console.print)
        verify_shards(shards)
    except (ConfigError, ShardError) as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 2
    if exp_dir is None:
        exp_dir = new_experiment_dir(args.out, run_cfg)
        record = {
            "experiment-id": exp_dir.name,
            "backend": backend,
            "created": utc_now(),
            "experiment": exp_cfg.as_dict(),
            "config": run_cfg.as_dict(),
            "data": data_cfg.as_dict(),
            "seeds": [run_cfg.seed + k for k in range(exp_cfg.repeats)],
            "versions": software_versions(),
            "repeats": {},
        }
    console.print(f"experiment {exp_dir} ({exp_cfg.repeats} repeats, backend {backend})")
    experiment = Experiment(
        exp_dir, record, run_cfg, data_cfg, exp_cfg, backend, shards, args.keep_up, args.compose_file
    )
    _interrupt_on_sigterm()
    try:
        return experiment.run()
    except KeyboardInterrupt:
        record.update(status="interrupted", ended=utc_now())
        experiment.save()
        console.print(
            f"interrupted; what was collected is kept. Resume with: python orchestrate.py "
            f"--out {exp_dir.parent} --resume {exp_dir.name}"
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
