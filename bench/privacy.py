"""The price of differential privacy: central accuracy against epsilon, every arm side by side in one invocation.

Arms: epsilon = inf (``dp=off``: fedimdb's defaults) and each finite target (``dp=server-fixed``), the same
federation, seed, shards, local budget and held-out rows. The inf arm runs first; the clipping norm of the
private arms is the median of its round-1 client update norms (client_updates.csv), so that clipping leaves
about half the updates alone; each private arm's noise multiplier is the smallest whose planned rounds stay
within its epsilon (fedimdb.privacy.noise_for). Time and bytes per round are printed too (DP adds neither: the
clipping and the noise are the server's). With ``--secure``, an arm with ``secure-aggregation=secaggplus`` (dp
off) follows the inf arm: the time and bytes SecAgg+ adds per round, and its accuracy. Run from the repository
root::

    python -m bench.privacy                    # 10 clients (the main job's), minilm, the TTA bench's quick budget
    python -m bench.privacy --rounds 3 --steps 8   # a quarter of the time
    python -m bench.privacy --secure --epsilons --rounds 2 --steps 8   # SecAgg+ against plain FedAvg only
    python -m bench.privacy --backend simulation --clients 100 --rounds 3 --steps 2 \\
        --set fine-tune=lora --set learning-rate=1e-3   # more clients, fewer weights in flight: less noise
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import DEFAULT_IMDB, FedRun, run_fedimdb, work_dir, write_result
from bench.tta import SIZES
from fedimdb.artifacts import CLIENT_UPDATES_FILE, read_csv
from fedimdb.config import DP_OFF, DP_SERVER_FIXED, SECAGG_PLUS, RunConfig
from fedimdb.privacy import noise_for

EPSILONS = (1.0, 4.0, 8.0)


@dataclass(frozen=True)
class Arm:
    """One epsilon's run: its settings and what came of them."""

    epsilon: float | None  # None: dp off (epsilon infinite)
    secure: bool  # secure-aggregation=secaggplus
    noise_multiplier: float
    clipping_norm: float
    accuracy: tuple[float, ...]  # central accuracy after each round
    round_seconds: float  # mean
    bytes_per_round: float  # sent and received


def arm_of(epsilon: float | None, noise: float, clip: float, run: FedRun, secure: bool = False) -> Arm:
    """An arm's figures from its rounds.csv."""
    return Arm(
        epsilon,
        secure,
        noise,
        clip,
        tuple(float(r["central_accuracy"]) for r in run.rounds),
        statistics.mean(float(r["round_seconds"]) for r in run.rounds),
        statistics.mean(int(r["bytes_sent"]) + int(r["bytes_received"]) for r in run.rounds),
    )


def median_update_norm(run: FedRun) -> float:
    """The median L2 norm of the round-1 client updates of a run (client_updates.csv)."""
    rows = read_csv(run.run_dir / CLIENT_UPDATES_FILE)
    return statistics.median(float(r["update_l2_norm"]) for r in rows if r["round"] == "1")


def main(argv: list[str] | None = None) -> int:
    """Run the arms, print accuracy against epsilon, write bench/results/privacy-*.json."""
    quick = SIZES["quick"]
    p = argparse.ArgumentParser(prog="python -m bench.privacy", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=RunConfig().num_clients)
    p.add_argument("--rounds", type=int, default=quick.rounds)
    p.add_argument("--steps", type=int, default=quick.steps, help="local steps per round")
    p.add_argument("--model", default="minilm")
    p.add_argument("--backend", default="local", choices=("local", "simulation"))
    p.add_argument(
        "--epsilons", type=float, nargs="*", default=list(EPSILONS), help="besides inf (dp off); none: no DP arm"
    )
    p.add_argument("--secure", action="store_true", help="a SecAgg+ arm (secure-aggregation=secaggplus, dp off)")
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of every arm (orchestrate.py's)"
    )
    a = p.parse_args(argv)
    if bad := [item for item in a.set if "=" not in item]:
        p.error(f"--set {bad[0]}: write KEY=VALUE, e.g. --set fine-tune=lora")
    settings = {**quick.run_settings(), "max-steps": a.steps, **dict(item.split("=", 1) for item in a.set)}
    delta = RunConfig().dp_delta
    args = ["--model", a.model, "--clients", str(a.clients), "--rounds", str(a.rounds), "--seed", "42"]
    with work_dir("privacy") as work:
        args += ["--data-source", str(a.data_source), "--shards-dir", str(work / "shards")]
        shared = {"min-reply-fraction": 1.0, **settings}
        if a.backend == "simulation":
            args += ["--retries", "0"]

        partitions = {"FEDIMDB_NUM_PARTITIONS": str(max(a.clients, RunConfig().num_clients))}

        def run(settings: dict[str, object]) -> FedRun:
            return run_fedimdb(work / "results", args, {**shared, **settings}, partitions, backend=a.backend)

        plain = run({"dp": DP_OFF})
        clip = median_update_norm(plain)
        arms = [arm_of(None, 0.0, 0.0, plain)]
        if a.secure:
            arms.append(arm_of(None, 0.0, 0.0, run({"dp": DP_OFF, "secure-aggregation": SECAGG_PLUS}), secure=True))
        for epsilon in sorted(a.epsilons, reverse=True):
            noise = noise_for(epsilon, a.rounds, delta, a.clients)
            dp = {"dp": DP_SERVER_FIXED, "dp-noise-multiplier": noise, "dp-clipping-norm": clip}
            arms.append(arm_of(epsilon, noise, clip, run({**dp, "dp-target-epsilon": epsilon})))
    print(
        f"{a.clients} clients x {a.rounds} rounds x {a.steps} steps of {a.model} {' '.join(a.set)}, delta {delta:g}, "
        f"clipping norm {clip:.4g}"
    )
    print(
        f"{'arm':>8}{'noise':>8}{'final acc':>11}{'÷ inf':>8}{'s/round':>9}{'÷ inf':>7}{'MB/round':>10}{'÷ inf':>7}  by round"
    )
    base = arms[0]
    for arm in arms:
        name = "secagg+" if arm.secure else f"{arm.epsilon or math.inf:g}"
        print(
            f"{name:>8}{arm.noise_multiplier:>8.3g}{arm.accuracy[-1]:>11.4f}{arm.accuracy[-1] / base.accuracy[-1]:>8.3f}"
            f"{arm.round_seconds:>9.1f}{arm.round_seconds / base.round_seconds:>7.2f}{arm.bytes_per_round / 1e6:>10.1f}"
            f"{arm.bytes_per_round / base.bytes_per_round:>7.2f}  " + " ".join(f"{x:.3f}" for x in arm.accuracy)
        )
    figures = {"clients": a.clients, "rounds": a.rounds, "steps": a.steps, "model": a.model, "backend": a.backend}
    figures |= {"delta": delta, "settings": settings}
    path = write_result("privacy", {**figures, "arms": [asdict(x) for x in arms]}, sys.argv)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
