"""Time to accuracy: every arm side by side, same model, seed and held-out rows.

Time to accuracy (TTA), as MLPerf and FedScale report it: the wall-clock seconds from the start
of round 1 until the central accuracy on the fixed held-out rows first reaches the target. For a
federated arm that is the sum of ``rounds.csv``'s ``round_seconds`` (train messages out, replies
in, aggregation, archiving, central evaluation) up to the first round at the target. The
centralised arm is one process using every core: it trains a round's worth of reviews
(``clients × steps × batch``) at a time with one AdamW that carries on across them, and
evaluates the same held-out rows after each; its TTA counts training and evaluation.

Arms: ``centralised``; ``stock-flower`` (the same app the way Flower's defaults run it: a fresh
``flwr-clientapp`` per message, separate evaluate messages, 3 s reply polls, float32, FedAvg);
``fedimdb`` (the defaults); and one arm per lever. Run from the repository root::

    python -m bench.tta                      # the quick size: target 0.80 (0.70 and 0.75 on the way)
    python -m bench.tta --size main          # the main job's size: target 0.85
    python -m bench.tta --arms fedimdb int8  # some arms, in the order given, beside the centralised one
    python -m bench.tta --size main --arms no-embeddings fedimdb --without-centralised  # a lever's before/after alone
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.common import (
    DEFAULT_IMDB,
    FedRun,
    RoundBreakdown,
    Variant,
    pooled_train_rows,
    round_breakdown,
    run_fedimdb,
    work_dir,
    write_result,
)
from fedimdb.artifacts import LOGS_DIR, read_json
from fedimdb.config import DataConfig
from fedimdb.data import SERVER_DIR, Examples, prepare_shards, read_split
from fedimdb.deploy.flwr_cli import FLWR_RUN_FILE
from fedimdb.model import load_model, pick_device
from fedimdb.training import evaluate, seed_everything, train


@dataclass(frozen=True)
class Size:
    """One size of the bench: the federation, its local budget and the target."""

    clients: int
    rounds: int
    steps: int
    batch_size: int
    max_length: int
    eval_rows: int
    target: float
    milestones: tuple[float, ...] = ()  # lower accuracies whose TTA is printed too

    @property
    def round_reviews(self) -> int:
        """Reviews all clients train in one round (each shard has enough rows)."""
        return self.clients * self.steps * self.batch_size

    def run_settings(self) -> dict[str, object]:
        """The fedimdb settings every federated arm shares."""
        return {
            "max-steps": self.steps,
            "batch-size": self.batch_size,
            "max-length": self.max_length,
            "eval-rows": self.eval_rows,
        }


SIZES = {
    "quick": Size(
        clients=4, rounds=6, steps=16, batch_size=16, max_length=64, eval_rows=500, target=0.80, milestones=(0.70, 0.75)
    ),
    "main": Size(
        clients=10, rounds=10, steps=16, batch_size=16, max_length=128, eval_rows=2000, target=0.85, milestones=(0.80,)
    ),
}

STOCK_FLOWER = Variant(
    "stock-flower",
    {"local-eval": "separate", "reply-poll-interval": 3.0, "weight-transport": "float32", "strategy": "fedavg"},
    {"FEDIMDB_WARM_CLIENTS": "false"},
)
ARMS = (
    STOCK_FLOWER,
    Variant("fedimdb"),
    Variant("int8", {"weight-transport": "int8"}),
    Variant("cosine-lr-3e-4", {"lr-schedule": "cosine", "learning-rate": 3e-4}),
    Variant("fedavgm-0.5", {"strategy": "fedavgm", "server-momentum": 0.5}),
    Variant("local-eval-rows-64", {"local-eval-rows": 64}),
    Variant("no-embeddings", {"fine-tune": "no-embeddings"}),
    Variant("lora-1e-3", {"fine-tune": "lora", "learning-rate": 1e-3}),
    Variant("warm-model", {"warm-model": True}),
    Variant("overlap-eval", {"overlap-central-eval": True}),
    Variant("warm-overlap", {"warm-model": True, "overlap-central-eval": True}),
)
"""The federated arms: Flower's defaults, fedimdb's, one lever each on top of fedimdb's, and the two levers
that leave every number alone together (warm-overlap)."""


@dataclass(frozen=True)
class Curve:
    """One arm's accuracy after each round (or a round's worth of reviews), with the time and bytes so far."""

    name: str
    accuracy: tuple[float, ...]
    seconds: tuple[float, ...]  # cumulative, from the start of round 1
    reviews: tuple[int, ...]  # cumulative
    bytes_per_round: float = 0.0  # both ways, the run's traffic over its rounds (0: not measured)
    breakdown: RoundBreakdown | None = None  # where a round's time went

    def reached(self, target: float) -> int | None:
        """The first round (1-based) whose accuracy is at least ``target``; None if none is."""
        return next((k + 1 for k, acc in enumerate(self.accuracy) if acc >= target), None)

    def tta(self, target: float) -> float | None:
        """Seconds until the target was first reached; None if it never was."""
        k = self.reached(target)
        return None if k is None else self.seconds[k - 1]


def cumulative(values: list[float]) -> tuple[float, ...]:
    """Running sums."""
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return tuple(out)


def federated_curve(variant: Variant, run: FedRun) -> Curve:
    """A federated arm's curve from its ``rounds.csv`` and the run's traffic from ``flwr ls``."""
    traffic = read_json(run.run_dir / LOGS_DIR / FLWR_RUN_FILE)["network-traffic"]["total-bytes"]
    return Curve(
        variant.name,
        tuple(float(r["central_accuracy"]) for r in run.rounds),
        cumulative([float(r["round_seconds"]) for r in run.rounds]),
        tuple(int(x) for x in cumulative([float(r["train_examples"]) for r in run.rounds])),
        float(traffic) / len(run.rounds),
        round_breakdown(run),
    )


def run_federated(variant: Variant, size: Size, work: Path, imdb: Path) -> Curve:
    """The arm through real Flower processes (local backend), on the shards the centralised arm used."""
    args = [
        "--model",
        "minilm",
        "--clients",
        str(size.clients),
        "--rounds",
        str(size.rounds),
        "--seed",
        "42",
        "--data-source",
        str(imdb),
        "--shards-dir",
        str(work / "shards"),
    ]
    run = run_fedimdb(work / "results", args, {**size.run_settings(), **variant.settings}, variant.env)
    return federated_curve(variant, run)


def round_chunk(data: Examples, server_round: int, size: int) -> Examples:
    """The ``size`` reviews of round ``server_round`` (0-based): the next ones of ``data``, starting over
    (another epoch) where it runs out, as each federated client cycles through its shard."""
    picks = [(server_round * size + i) % len(data.labels) for i in range(size)]
    return Examples([data.texts[i] for i in picks], [data.labels[i] for i in picks])


def run_centralised(size: Size, shards: Path, seed: int = 42) -> Curve:
    """One process, every core: a round's worth of reviews at a time, one AdamW throughout."""
    data = pooled_train_rows(shards, size.clients, seed)
    held_out = read_split(shards / SERVER_DIR, "test").head(size.eval_rows)
    model, tokenizer = load_model("minilm", seed)
    seed_everything(seed, os.cpu_count() or 1)
    device = pick_device("auto")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    options = {"batch_size": size.batch_size, "max_length": size.max_length, "device": device}
    accuracy, train_s, eval_s, reviews = [], [], [], []
    for k in range(size.rounds):
        chunk = round_chunk(data, k, size.round_reviews)
        start = time.perf_counter()
        result = train(
            model,
            tokenizer,
            chunk,
            epochs=1,
            max_steps=0,
            learning_rate=1e-4,
            seed=seed + k,
            micro_batch_size=4,
            optimizer=optimizer,
            **options,
        )
        trained = time.perf_counter()
        accuracy.append(evaluate(model, tokenizer, held_out, **options).accuracy)
        train_s.append(trained - start)
        eval_s.append(time.perf_counter() - trained)
        reviews.append(result.num_examples)
    seconds = [t + e for t, e in zip(train_s, eval_s, strict=True)]
    breakdown = RoundBreakdown(
        statistics.mean(seconds), statistics.mean(train_s), central_eval_s=statistics.mean(eval_s)
    )
    return Curve(
        "centralised",
        tuple(accuracy),
        cumulative(seconds),
        tuple(int(x) for x in cumulative(reviews)),
        breakdown=breakdown,
    )


def table(curves: list[Curve], size: Size, fp32_bound: float) -> list[dict[str, object]]:
    """One row per arm: TTA, its ratios to centralised and to stock Flower, what it took, the final accuracy."""
    by_name = {c.name: c for c in curves}
    rows = []
    for c in curves:
        k, tta = c.reached(size.target), c.tta(size.target)
        row = {
            "arm": c.name,
            "tta_s": tta,
            "rounds": k,
            "reviews": c.reviews[k - 1] if k else None,
            "bytes": c.bytes_per_round * k if k and c.bytes_per_round else None,
            "final_accuracy": c.accuracy[-1],
            "bytes_per_round_vs_fp32": c.bytes_per_round / fp32_bound if c.bytes_per_round else None,
        }
        for ref in ("centralised", STOCK_FLOWER.name):
            ref_tta = by_name[ref].tta(size.target) if ref in by_name else None
            row[f"tta_vs_{ref}"] = tta / ref_tta if tta is not None and ref_tta else None
        rows.append(row)
    return rows


def fp32_bound(size: Size) -> float:
    """Bytes of a round if every client received and returned the whole float32 model once."""
    model, _ = load_model("minilm", 0)
    return 2.0 * size.clients * sum(t.numel() * 4 for t in model.state_dict().values())


def _cell(value: object, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def print_table(rows: list[dict[str, object]], curves: list[Curve], size: Size) -> None:
    """The table (– : target not reached, or not measured), then each arm's accuracy per round."""
    print(
        f"target {size.target}: {'arm':<20}{'TTA s':>12}{'÷ central':>11}{'÷ stock':>9}{'rounds':>8}"
        f"{'reviews':>9}{'MB moved':>10}{'bytes ÷ fp32':>13}{'final acc':>10}"
    )
    for r in rows:
        mb = None if r["bytes"] is None else float(r["bytes"]) / 1e6  # type: ignore[arg-type]
        print(
            f"{'':<15}{r['arm']:<20}{_cell(r['tta_s'], '.0f'):>12}{_cell(r['tta_vs_centralised'], '.2f'):>11}"
            f"{_cell(r['tta_vs_stock-flower'], '.2f'):>9}{_cell(r['rounds'], 'd'):>8}{_cell(r['reviews'], 'd'):>9}"
            f"{_cell(mb, '.0f'):>10}{_cell(r['bytes_per_round_vs_fp32'], '.3f'):>13}"
            f"{r['final_accuracy']:>10.4f}"
        )
    print("– : the target was not reached (or, for bytes, not measured)")
    for c in curves:
        print(f"{c.name:<20}" + " ".join(f"{a:.3f}@{s:.0f}s" for a, s in zip(c.accuracy, c.seconds, strict=True)))


def milestone_seconds(curves: list[Curve], size: Size) -> dict[str, dict[str, float | None]]:
    """Each arm's TTA at each milestone and the target (None: not reached)."""
    return {c.name: {f"{t:.2f}": c.tta(t) for t in (*size.milestones, size.target)} for c in curves}


def print_milestones(seconds: dict[str, dict[str, float | None]]) -> None:
    """Seconds to each accuracy, an arm a line (– : not reached)."""
    for arm, by_target in seconds.items():
        print(f"{arm:<20}" + "  ".join(f"{t}: {_cell(s, '.0f'):>5} s" for t, s in by_target.items()))


def print_breakdowns(curves: list[Curve]) -> None:
    """Where each arm's round went, means in seconds (set-up: before training, the local evaluation with it)."""
    print(f"{'a round, s':<20}{'round':>8}{'train':>8}{'set-up':>8}{'central eval':>14}{'other':>8}")
    for c in curves:
        if (b := c.breakdown) is not None:
            print(
                f"{c.name:<20}{b.round_s:>8.1f}{b.slowest_train_s:>8.1f}{b.slowest_setup_s:>8.1f}"
                f"{b.central_eval_s:>14.1f}{b.other_s:>8.1f}"
            )


def run_arm(variant: Variant, size: Size, work: Path, imdb: Path) -> Curve | None:
    """One federated arm, or None (and why, printed) when its run failed: the other arms still run."""
    try:
        return run_federated(variant, size, work, imdb)
    except RuntimeError as exc:
        print(f"{variant.name}: failed, left out of the table: {exc}", file=sys.stderr, flush=True)
        return None


def progress(curve: Curve) -> Curve:
    """Print an arm's curve as soon as it is measured (a long invocation shows what it has so far)."""
    points = " ".join(f"{x:.3f}@{t:.0f}s" for x, t in zip(curve.accuracy, curve.seconds, strict=True))
    print(f"{curve.name} ({curve.bytes_per_round / 1e6:.0f} MB a round): {points}", flush=True)
    return curve


def main(argv: list[str] | None = None) -> int:
    """Run the arms, print the table, write bench/results/tta-*.json."""
    p = argparse.ArgumentParser(prog="python -m bench.tta", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=list(SIZES), default="quick")
    p.add_argument(
        "--arms",
        nargs="+",
        default=[v.name for v in ARMS],
        choices=[v.name for v in ARMS],
        help="federated arms to run beside the centralised one, in this order",
    )
    p.add_argument(
        "--without-centralised",
        action="store_true",
        help="leave the centralised arm out (a lever's before and after alone; the ratios to it stay empty)",
    )
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    a = p.parse_args(argv)
    size = SIZES[a.size]
    with work_dir("tta") as work:
        shards = prepare_shards(DataConfig(data_source=str(a.data_source), shards_dir=str(work / "shards")))
        curves = [] if a.without_centralised else [progress(run_centralised(size, shards))]
        by_name = {v.name: v for v in ARMS}
        for variant in (by_name[name] for name in dict.fromkeys(a.arms)):
            if (curve := run_arm(variant, size, work, a.data_source)) is not None:
                curves.append(progress(curve))
    rows = table(curves, size, fp32_bound(size))
    print_table(rows, curves, size)
    milestones = milestone_seconds(curves, size)
    print_milestones(milestones)
    print_breakdowns(curves)
    curve_figures = [asdict(c) for c in curves]
    figures = {"size": a.size, **asdict(size), "table": rows, "tta_s_by_accuracy": milestones, "curves": curve_figures}
    print(f"written: {write_result('tta', figures, sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
