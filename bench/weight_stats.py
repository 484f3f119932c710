"""What the weight statistics add to a round on the server: minilm, 10 clients, on against off.

One round's server-side weight handling as the ServerApp does it: FedAvg aggregates 10 client
replies (Flower's ``aggregate_arrayrecords``) and the global model is archived (safetensors). With
the statistics on, the same plus ``weight_stats.csv``'s rows of the new global model and
``client_updates.csv``'s rows of the 10 updates (server/scrutiny.py), the client replies viewed as
tensors as the strategy does. Off and on alternate in one process; the added seconds per round are
the difference of the medians. Run from the repository root::

    python -m bench.weight_stats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from safetensors.torch import save_file

from bench.common import write_result
from fedimdb.model import load_model
from fedimdb.protocol import ARRAYS, METRICS, NUM_EXAMPLES, state_view
from fedimdb.weights import ClientUpdate
from server.scrutiny import WeightLog

CLIENTS = 10


def replies(state: dict[str, torch.Tensor], clients: int) -> list[RecordDict]:
    """Client replies: the global model plus a small update each, with its example count."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for k in range(clients):
        new = {
            n: t + 1e-3 * torch.randn(t.shape, generator=gen) if t.is_floating_point() else t for n, t in state.items()
        }
        out.append(RecordDict({ARRAYS: ArrayRecord(new), METRICS: MetricRecord({NUM_EXAMPLES: 256 + k})}))
    return out


def one_round(state: dict[str, torch.Tensor], sent: list[RecordDict], folder: Path, log: WeightLog | None) -> float:
    """Seconds of one round's weight handling: aggregate, archive, and with ``log`` the statistics."""
    start = time.perf_counter()
    aggregate = aggregate_arrayrecords(sent, NUM_EXAMPLES)
    new = aggregate.to_torch_state_dict()
    save_file({k: v.contiguous() for k, v in new.items()}, str(folder / "round.safetensors"))
    if log is not None:
        updates = [ClientUpdate(k, int(r[METRICS][NUM_EXAMPLES]), state_view(r[ARRAYS])) for k, r in enumerate(sent)]
        log.client_updates(1, state, new, updates)
        log.global_model(1, new)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.weight_stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--repeats", type=int, default=5, help="rounds timed per side (alternating)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as one ServerApp process on a shared machine
    model, _ = load_model(args.model, 42)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sent = replies(state, CLIENTS)
    off, on = [], []
    with tempfile.TemporaryDirectory() as tmp:
        log = WeightLog(3.5)
        log.global_model(0, state)
        for _ in range(args.repeats):
            off.append(one_round(state, sent, Path(tmp), None))
            on.append(one_round(state, sent, Path(tmp), log))
    params = sum(t.numel() for t in state.values() if t.is_floating_point())
    figures = {
        "model": args.model,
        "parameters": params,
        "clients": CLIENTS,
        "off_seconds": off,
        "on_seconds": on,
        "off_median": statistics.median(off),
        "on_median": statistics.median(on),
        "added_seconds": statistics.median(on) - statistics.median(off),
        "ratio_on_off": statistics.median(on) / statistics.median(off),
    }
    print(
        f"{args.model} ({params / 1e6:.1f} M parameters), {CLIENTS} clients, one round's weight handling on the "
        f"server: off {figures['off_median']:.2f} s, on {figures['on_median']:.2f} s: +{figures['added_seconds']:.2f} "
        f"s a round (on/off {figures['ratio_on_off']:.2f})"
    )
    print(write_result("weight_stats", figures, [sys.executable, "-m", "bench.weight_stats", *(argv or sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
