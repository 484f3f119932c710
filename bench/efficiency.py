"""Training efficiency: how much of the machine a federated round turns into training.

Efficiency = samples trained by all clients ÷ (round wall time − the server's central evaluation),
divided by the samples/s of one centralised training process that uses every core, measured in
the same invocation on the same machine, model, length and batch. Run from the repository root::

    python -m bench.efficiency          # minilm, 10 clients, 16 steps of 16 (256 samples) a round
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from bench.common import DEFAULT_IMDB, job_args, run_fedimdb, work_dir, write_result
from fedimdb.data import client_dir_name, read_split
from fedimdb.model import load_model, pick_device
from fedimdb.training import seed_everything, train

TARGET = 0.85


def centralised_rate(shards: Path, samples: int, batch_size: int, max_length: int) -> float:
    """Samples/s of one process training minilm on all cores."""
    data = read_split(shards / client_dir_name(0), "train").head(samples)
    model, tokenizer = load_model("minilm", 0)
    seed_everything(0, os.cpu_count() or 1)
    result = train(
        model,
        tokenizer,
        data,
        epochs=1,
        max_steps=0,
        learning_rate=1e-4,
        seed=0,
        batch_size=batch_size,
        max_length=max_length,
        device=pick_device("auto"),
    )
    return result.samples_per_second


def main(argv: list[str] | None = None) -> int:
    """The federated run, then the centralised rate; ratio per round and mean."""
    p = argparse.ArgumentParser(prog="python -m bench.efficiency", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=16, help="local steps of 16 per round (16: 256 samples)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    a = p.parse_args(argv)
    settings = {
        "max-steps": a.steps,
        "batch-size": 16,
        "max-length": a.max_length,
        "eval-rows": 200,
        "local-eval-rows": 32,
    }
    with work_dir("efficiency") as work:
        args = job_args("minilm", a.clients, a.rounds, a.data_source, work)
        run = run_fedimdb(work / "results", args, settings)
        rate = centralised_rate(work / "shards", 16 * a.steps, 16, a.max_length)
    rounds = []
    for row in run.rounds:
        busy = float(row["round_seconds"]) - float(row["central_eval_seconds"])
        fed_rate = int(row["train_examples"]) / busy
        rounds.append(
            {
                "round": int(row["round"]),
                "samples": int(row["train_examples"]),
                "seconds": busy,
                "samples_per_s": fed_rate,
                "efficiency": fed_rate / rate,
            }
        )
        print(
            f"round {row['round']}: {row['train_examples']} samples in {busy:.1f} s = {fed_rate:.2f} samples/s; "
            f"centralised {rate:.2f} samples/s; efficiency {fed_rate / rate:.3f}"
        )
    mean = statistics.mean(r["efficiency"] for r in rounds)
    print(f"mean efficiency {mean:.3f} (target ≥ {TARGET})")
    figures = {"settings": settings, "centralised_samples_per_s": rate, "rounds": rounds, "efficiency": mean}
    print(f"written: {write_result('efficiency', figures, sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
