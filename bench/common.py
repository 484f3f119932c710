"""What every benchmark shares: running fedimdb as a user does, reading its rows, writing results.

Benchmarks print ratios measured side by side in one invocation and write their figures, with
the machine they ran on, to ``bench/results/<name>-<UTC time>.json``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedimdb.artifacts import RUN_FILE, read_csv, write_json_atomic
from fedimdb.data import Examples, client_dir_name, read_split
from fedimdb.deploy import APP_DIR
from fedimdb.experiment import repeat_dir
from fedimdb.run_record import RunRecord, read_run_record

RESULTS_DIR = APP_DIR / "bench" / "results"
DEFAULT_IMDB = APP_DIR.parent / "shared" / "data" / "imdb"


@dataclass(frozen=True)
class Variant:
    """A fedimdb configuration: run settings and experiment environment."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    models: tuple[str, ...] = ("tiny", "minilm")


def pooled_train_rows(shards: Path, clients: int, seed: int) -> Examples:
    """The union of the clients' train splits, shuffled: what one centralised process trains on."""
    rows: list[tuple[str, int]] = []
    for k in range(clients):
        split = read_split(shards / client_dir_name(k), "train")
        rows += zip(split.texts, split.labels, strict=True)
    random.Random(seed).shuffle(rows)
    return Examples([t for t, _ in rows], [y for _, y in rows])


@dataclass(frozen=True)
class FedRun:
    """One fedimdb run's artifact folder and its rows."""

    run_dir: Path
    rounds: list[dict[str, str]]
    clients: list[dict[str, str]]

    @property
    def meta(self) -> RunRecord:
        """run.json."""
        return read_run_record(self.run_dir / RUN_FILE)

    @property
    def final_accuracy(self) -> float:
        """Central accuracy after the last round."""
        return float(self.rounds[-1]["central_accuracy"])


@dataclass(frozen=True)
class RoundBreakdown:
    """Where a run's rounds went: means over its rounds, in seconds."""

    round_s: float
    slowest_train_s: float = 0.0
    slowest_setup_s: float = 0.0  # model, weights, data and the local evaluation, before training
    central_eval_s: float = 0.0

    @property
    def other_s(self) -> float:
        """What the parts leave: messages out and back, waits, aggregation, archiving (clients overlap)."""
        return self.round_s - self.slowest_train_s - self.slowest_setup_s - self.central_eval_s


def round_breakdown(run: FedRun) -> RoundBreakdown:
    """A run's mean round time, slowest client training and set-up, and central evaluation."""
    by_round: dict[str, list[dict[str, str]]] = {}
    for row in run.clients:
        if row["train_seconds"] != "":  # a failed client's row has no timings
            by_round.setdefault(row["round"], []).append(row)
    return RoundBreakdown(
        statistics.mean(float(r["round_seconds"]) for r in run.rounds),
        statistics.mean(max(float(r["train_seconds"]) for r in rows) for rows in by_round.values()),
        statistics.mean(max(float(r["setup_seconds"]) for r in rows) for rows in by_round.values()),
        statistics.mean(float(r["central_eval_seconds"]) for r in run.rounds),
    )


def job_args(model: str, clients: int, rounds: int, data_source: Path, work: Path) -> list[str]:
    """orchestrate.py's options for a bench run: model, clients, rounds, data, and shards under ``work``."""
    return [
        "--model",
        model,
        "--clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--data-source",
        str(data_source),
        "--shards-dir",
        str(work / "shards"),
    ]


def run_fedimdb(
    out: Path,
    args: Sequence[str],
    settings: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    backend: str = "local",
) -> FedRun:
    """``orchestrate.py --backend BACKEND ARGS --set K=V ...`` to its end; its one repeat's rows."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    cmd = [sys.executable, str(APP_DIR / "orchestrate.py"), "--backend", backend, "--metrics-port", "0"]
    cmd += [*args, "--out", str(out)]
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    # Flower's binaries beside this interpreter, as in an activated venv (``.venv/bin/python -m bench.x``).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    run_env = {**os.environ, "PATH": path, **(env or {})}
    proc = subprocess.run(cmd, cwd=APP_DIR, env=run_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    (exp_dir,) = set(out.iterdir()) - before
    run_dir = repeat_dir(exp_dir, 0)
    return FedRun(run_dir, read_csv(run_dir / "rounds.csv"), read_csv(run_dir / "clients.csv"))


def machine() -> dict[str, Any]:
    """The machine and software the figures were measured on."""
    import flwr
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=APP_DIR, capture_output=True, text=True)
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "1.39.0",
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "commit": commit.stdout.strip(),
    }


def write_result(name: str, figures: Mapping[str, Any], command: Sequence[str]) -> Path:
    """``bench/results/NAME-<UTC time>.json`` with the figures, the machine and the command."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    write_json_atomic(
        path, {"benchmark": name, "utc": stamp, "command": list(command), "machine": machine(), **figures}
    )
    return path


@contextlib.contextmanager
def work_dir(name: str) -> Iterator[Path]:
    """A scratch folder for one benchmark: removed when it succeeds, kept (and named) when it fails."""
    path = Path(tempfile.mkdtemp(prefix=f"fedimdb-bench-{name}-"))
    try:
        yield path
    except BaseException:
        print(f"kept for inspection: {path}", file=sys.stderr)
        raise
    shutil.rmtree(path, ignore_errors=True)
