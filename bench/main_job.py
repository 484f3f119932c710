"""The default main job, end to end: its time and the accuracy it reaches.

Runs one repeat with every setting at its default (minilm, 10 clients × 10 rounds of FedAvg,
16 local steps of 16 reviews a round, length 128, 2,000 held-out reviews) on Compose, from a
local IMDB folder, and prints each round's time and central accuracy. Images are built first if
needed (that time is not counted). Run from the repository root::

    python -m bench.main_job             # Compose; --backend local for the local processes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.common import DEFAULT_IMDB, run_fedimdb, work_dir, write_result

TARGET_ACCURACY = 0.85


def main(argv: list[str] | None = None) -> int:
    """One default repeat; per-round table; bench/results/main_job-*.json."""
    p = argparse.ArgumentParser(prog="python -m bench.main_job", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("docker", "local"), default="docker")
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    a = p.parse_args(argv)
    started = time.monotonic()
    with work_dir("main-job") as work:
        args = ["--data-source", str(a.data_source), "--shards-dir", str(work / "shards"), "--repeats", "1"]
        run = run_fedimdb(work / "results", args, {}, backend=a.backend)
        settings = run.meta.config
    total = time.monotonic() - started
    rounds = [
        {
            "round": int(r["round"]),
            "seconds": float(r["round_seconds"]),
            "central_eval_seconds": float(r["central_eval_seconds"]),
            "central_accuracy": float(r["central_accuracy"]),
        }
        for r in run.rounds
    ]
    for r in rounds:
        print(
            f"round {r['round']:>2}: {r['seconds']:7.1f} s (central evaluation {r['central_eval_seconds']:.1f} s), "
            f"accuracy {r['central_accuracy']:.4f}"
        )
    print(
        f"{a.backend}: {total / 60:.1f} min from start to verified artifacts; final accuracy "
        f"{run.final_accuracy:.4f} (target ≥ {TARGET_ACCURACY})"
    )
    figures = {
        "backend": a.backend,
        "run_config": settings,
        "rounds": rounds,
        "total_seconds": total,
        "final_accuracy": run.final_accuracy,
    }
    print(f"written: {write_result('main_job', figures, sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
