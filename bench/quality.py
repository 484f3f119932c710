"""Quality: FedAvg (10 IID clients, and Dirichlet label skew) against centralised fine-tuning.

Same model, same training loop (fedimdb.training.train), same total sample budget, one epoch's
worth of steps, same learning rate, batch and length, and the same held-out test rows. The
centralised run is one process using every core, on a random sample of the union of the clients'
train splits. Run from the repository root::

    python -m bench.quality            # 10 clients x 5 rounds x 5 steps x 16 = 4,000 samples, length 64

The float16 arm is the IID arm with ``weight-transport=float16``: the accuracy cost of halving the
bytes on the wire. With ``--same-steps``, one more centralised arm takes as many sequential
optimizer steps as FedAvg does (rounds × local steps), each on clients × batch reviews: the same
samples in a tenth of the steps, which tells the cost of fewer sequential updates from the cost
of federation.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import DEFAULT_IMDB, pooled_train_rows, run_fedimdb, work_dir, write_result
from fedimdb.data import SERVER_DIR, read_split
from fedimdb.model import load_model, pick_device
from fedimdb.training import evaluate, seed_everything, train


@dataclass(frozen=True)
class Budget:
    """The shared training budget of every arm."""

    clients: int
    rounds: int
    steps: int
    batch_size: int
    max_length: int
    learning_rate: float
    eval_rows: int
    seed: int

    @property
    def samples(self) -> int:
        """Samples trained in all (when every shard has enough rows)."""
        return self.clients * self.rounds * self.steps * self.batch_size

    def run_settings(self) -> dict[str, object]:
        """fedimdb run settings of the federated arms."""
        return {
            "max-steps": self.steps,
            "batch-size": self.batch_size,
            "max-length": self.max_length,
            "learning-rate": self.learning_rate,
            "eval-rows": self.eval_rows,
            "local-eval-rows": 32,
        }


@dataclass(frozen=True)
class Arm:
    """One arm's outcome."""

    name: str
    accuracy: float
    samples: int
    accuracy_per_round: tuple[float, ...] = ()


def centralised(shards: Path, budget: Budget, batch_size: int = 0) -> Arm:
    """One process, all cores: ``budget.samples`` random rows of the clients' train splits, one pass.

    The rows come from the first federated arm's shards (IID by default); the held-out rows are the
    same for every partitioner. ``batch_size`` (default: the budget's) changes the number of steps,
    not the samples; a larger batch is computed in passes of the budget's batch (same gradient).
    """
    batch_size = batch_size or budget.batch_size
    data = pooled_train_rows(shards, budget.clients, budget.seed).head(budget.samples)
    model, tokenizer = load_model("minilm", budget.seed)
    seed_everything(budget.seed, os.cpu_count() or 1)
    device = pick_device("auto")
    options = {"max_length": budget.max_length, "device": device}
    result = train(
        model,
        tokenizer,
        data,
        epochs=1,
        max_steps=0,
        learning_rate=budget.learning_rate,
        seed=budget.seed,
        batch_size=batch_size,
        micro_batch_size=budget.batch_size,
        **options,
    )
    held_out = read_split(shards / SERVER_DIR, "test").head(budget.eval_rows)
    accuracy = evaluate(model, tokenizer, held_out, batch_size=budget.batch_size, **options).accuracy
    name = "centralised" if batch_size == budget.batch_size else f"centralised-batch-{batch_size}"
    return Arm(name, accuracy, result.num_examples)


IID = ["--partitioner", "iid"]
FEDERATED_ARMS = {
    "fedavg-iid": (IID, {}),
    "fedavg-iid-float16": (IID, {"weight-transport": "float16"}),
    "fedavg-dirichlet-0.5": (["--partitioner", "dirichlet", "--alpha", "0.5"], {}),
}
"""Name: (partitioner options, run settings beyond the budget's)."""


def shards_dir(work: Path, name: str) -> Path:
    """Where an arm's shards are prepared (shared by arms with the same partitioner)."""
    partitioner, _ = FEDERATED_ARMS[name]
    return work / f"shards-{partitioner[1]}"


def federated(name: str, work: Path, imdb: Path, budget: Budget) -> Arm:
    """FedAvg through real Flower processes (local backend) with the same budget."""
    partitioner, settings = FEDERATED_ARMS[name]
    shards = shards_dir(work, name)
    args = [
        "--model",
        "minilm",
        "--clients",
        str(budget.clients),
        "--rounds",
        str(budget.rounds),
        "--seed",
        str(budget.seed),
        "--data-source",
        str(imdb),
        "--shards-dir",
        str(shards),
        *partitioner,
    ]
    run = run_fedimdb(work / "results", args, {**budget.run_settings(), **settings})
    samples = sum(int(r["train_examples"]) for r in run.rounds)
    return Arm(name, run.final_accuracy, samples, tuple(float(r["central_accuracy"]) for r in run.rounds))


def main(argv: list[str] | None = None) -> int:
    """Run the arms, print the table and the ratios, write bench/results/quality-*.json."""
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="local steps per round")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--eval-rows", type=int, default=500)
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    p.add_argument(
        "--arms",
        nargs="+",
        default=list(FEDERATED_ARMS),
        choices=list(FEDERATED_ARMS),
        help="federated arms to run beside the centralised one",
    )
    p.add_argument(
        "--same-steps",
        action="store_true",
        help="also centralised with FedAvg's number of sequential steps (batch x clients)",
    )
    a = p.parse_args(argv)
    budget = Budget(a.clients, a.rounds, a.steps, 16, a.max_length, a.learning_rate, a.eval_rows, seed=42)
    with work_dir("quality") as work:
        runs = [federated(name, work, a.data_source, budget) for name in a.arms]
        central = centralised(shards_dir(work, a.arms[0]), budget)
        same_steps = [centralised(shards_dir(work, a.arms[0]), budget, 16 * a.clients)] if a.same_steps else []
    arms = [central, *same_steps, *runs]
    print(f"{'arm':<24}{'samples':>9}{'accuracy':>10}{'÷ centralised':>15}")
    for arm in arms:
        print(
            f"{arm.name:<24}{arm.samples:>9}{arm.accuracy:>10.4f}{arm.accuracy / central.accuracy:>15.3f}  "
            + " ".join(f"{x:.3f}" for x in arm.accuracy_per_round)
        )
    path = write_result("quality", {"budget": asdict(budget), "arms": [asdict(x) for x in arms]}, sys.argv)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
