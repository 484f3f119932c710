"""Per-round overhead and bytes on the wire, against Flower's own defaults, side by side.

In one invocation, on the same machine and local deployment (a SuperLink and N SuperNodes on
loopback): the no-compute Flower app of bench/flower_baseline (stock FedAvg, Flower's waits and
process model) with random weights the size of ``tiny`` and of ``minilm``, then fedimdb with each
model, once per variant. A fedimdb round's overhead is its wall time minus the slowest client's
training time; the ratio is that overhead over the baseline's round time for the same weights.
Run from the repository root::

    python -m bench.overhead                     # 10 clients, 3 rounds, local backend
    python -m bench.overhead --backend docker    # fedimdb on Compose stacks (baseline: local)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_IMDB, Variant, job_args, round_breakdown, run_fedimdb, work_dir, write_result
from fedimdb.artifacts import LOGS_DIR, read_json
from fedimdb.config import RunConfig
from fedimdb.deploy import flwr_cli
from fedimdb.deploy.flwr_cli import FLWR_RUN_FILE
from fedimdb.deploy.local import LocalFederation, process_env
from fedimdb.deploy.topology import LOCAL_CONNECTION
from fedimdb.model import load_model

BASELINE_APP = Path(__file__).with_name("flower_baseline")
TARGETS = {"tiny": 0.25, "minilm": 0.4}  # overhead ÷ baseline round, from the issue
SETTINGS = {"max-steps": 1, "batch-size": 16, "max-length": 32, "eval-rows": 200, "local-eval-rows": 50}


VARIANTS = (
    Variant("flower-waits", {"local-eval": "separate", "reply-poll-interval": 3.0}, {"FEDIMDB_WARM_CLIENTS": "false"}),
    Variant("cold-nodes", env={"FEDIMDB_WARM_CLIENTS": "false"}),
    Variant("default"),
    Variant("superexec-0.25", env={"FEDIMDB_SUPEREXEC_POLL_INTERVAL": "0.25"}),
    Variant("float16", {"weight-transport": "float16"}, models=("minilm",)),
)
"""flower-waits is fedimdb before this work: cold processes, separate evaluate messages, 3 s waits."""


@dataclass(frozen=True)
class Arm:
    """Means over a run's rounds (seconds) and its traffic."""

    name: str
    model: str
    round_s: float
    slowest_train_s: float = 0.0
    slowest_setup_s: float = 0.0
    central_eval_s: float = 0.0
    bytes_per_round: float = 0.0

    @property
    def overhead_s(self) -> float:
        """Round wall time minus the slowest client's training."""
        return self.round_s - self.slowest_train_s


def num_params(model: str) -> int:
    """Parameters (and buffers) the model's messages carry."""
    net, _ = load_model(model, 0)
    return sum(t.numel() for t in net.state_dict().values())


def traffic(entry: Mapping[str, Any]) -> float:
    """Bytes in plus out of a run, from its ``flwr ls`` entry."""
    return float(entry["network-traffic"]["total-bytes"])


def baseline(model: str, clients: int, rounds: int, work: Path) -> Arm:
    """bench/flower_baseline on a fresh local federation with Flower's process model."""
    out = work / f"baseline-{model}"
    out.mkdir(parents=True)
    env = process_env(RunConfig(num_clients=clients), work / f"flwr-home-{model}")
    with LocalFederation(work, clients, out / LOGS_DIR, env, warm_clients=False):
        config = {"num-rounds": rounds, "num-clients": clients, "num-params": num_params(model), "output-dir": str(out)}
        run_id = flwr_cli.submit_run(BASELINE_APP, LOCAL_CONNECTION, config, env, out / "submit")
        entry = flwr_cli.wait_for_run(LOCAL_CONNECTION, run_id, env, timeout=600 * rounds, poll_seconds=1.0)
    if entry["status"] != flwr_cli.FLOWER_COMPLETED:
        raise RuntimeError(f"baseline {model}: {entry['status']} {entry.get('status-details')}")
    seconds = read_json(out / "rounds.json")["round-seconds"]
    return Arm("flower-default", model, statistics.mean(seconds), bytes_per_round=traffic(entry) / rounds)


def fedimdb_arm(variant: Variant, model: str, a: argparse.Namespace, work: Path) -> Arm:
    """fedimdb with this variant on ``a.backend``, from the rows it wrote."""
    args = job_args(model, a.clients, a.rounds, a.data_source, work)
    run = run_fedimdb(work / "results", args, {**SETTINGS, **variant.settings}, variant.env, a.backend)
    traffic_per_round = traffic(read_json(run.run_dir / LOGS_DIR / FLWR_RUN_FILE)) / a.rounds
    return Arm(f"{variant.name}@{a.backend}", model, **asdict(round_breakdown(run)), bytes_per_round=traffic_per_round)


def report(arms: list[Arm], params: Mapping[str, int], clients: int) -> list[dict[str, Any]]:
    """Print the table; return its rows."""
    rows = []
    print(
        f"{'model':<8}{'arm':<24}{'round s':>9}{'train s':>9}{'setup s':>9}{'eval s':>8}{'overhead s':>11}"
        f"{'÷ flower':>10}{'bytes ÷ fp32 bound':>20}"
    )
    for arm in arms:
        base = next(a for a in arms if a.model == arm.model and a.name == "flower-default")
        ratio = arm.overhead_s / base.round_s
        bound = 2 * 4 * params[arm.model] * clients
        row = {**asdict(arm), "overhead_s": arm.overhead_s, "ratio": ratio, "bytes_ratio": arm.bytes_per_round / bound}
        rows.append(row)
        print(
            f"{arm.model:<8}{arm.name:<24}{arm.round_s:>9.2f}{arm.slowest_train_s:>9.2f}{arm.slowest_setup_s:>9.2f}"
            f"{arm.central_eval_s:>8.2f}{arm.overhead_s:>11.2f}{ratio:>10.3f}{row['bytes_ratio']:>20.3f}"
        )
    print("targets: overhead ÷ flower " + ", ".join(f"{m} ≤ {t}" for m, t in TARGETS.items()))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Baselines, then every variant of fedimdb, for both models; table and bench/results/overhead-*.json."""
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS], choices=[v.name for v in VARIANTS])
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    p.add_argument(
        "--backend",
        choices=("local", "docker"),
        default="local",
        help="where fedimdb runs (the Flower-default baseline always runs locally)",
    )
    a = p.parse_args(argv)
    params = {m: num_params(m) for m in a.models}
    arms: list[Arm] = []
    with work_dir("overhead") as work:
        for model in a.models:
            arms.append(baseline(model, a.clients, a.rounds, work))
            for variant in (v for v in VARIANTS if v.name in a.variants and model in v.models):
                arms.append(fedimdb_arm(variant, model, a, work))
    rows = report(arms, params, a.clients)
    figures = {
        "clients": a.clients,
        "rounds": a.rounds,
        "backend": a.backend,
        "settings": SETTINGS,
        "params": params,
        "arms": rows,
    }
    print(f"written: {write_result('overhead', figures, sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
