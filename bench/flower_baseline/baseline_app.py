"""A no-compute Flower app with Flower's defaults: the yardstick of bench/overhead.py.

The ServerApp runs stock FedAvg (separate train and evaluate messages, Flower's
``send_and_receive``) on random float32 weights of ``num-params`` parameters (random: Flower
sends equal chunks once). ClientApps return the weights plus a constant of their own, so every reply is new bytes.
Each round's wall time (from one ``evaluate_fn`` call to the next) goes to
``output-dir/rounds.json``.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

LAYERS = 8  # the weights are split over this many arrays, like a model's tensors
ROUNDS_FILE = "rounds.json"

server = ServerApp()
client = ClientApp()


def random_arrays(num_params: int) -> ArrayRecord:
    """``num_params`` random float32 values in ``LAYERS`` arrays."""
    rng = np.random.default_rng(0)
    sizes = [num_params // LAYERS + (i < num_params % LAYERS) for i in range(LAYERS)]
    return ArrayRecord([rng.standard_normal(n, dtype=np.float32) for n in sizes])


@server.main()
def main(grid: Grid, context: Context) -> None:
    """Stock FedAvg over all nodes; record each round's wall time."""
    cfg = context.run_config
    nodes = int(cfg["num-clients"])
    stamps: list[float] = []

    def clock(server_round: int, arrays: ArrayRecord) -> None:
        stamps.append(time.monotonic())

    strategy = FedAvg(min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes)
    strategy.start(
        grid=grid,
        initial_arrays=random_arrays(int(cfg["num-params"])),
        num_rounds=int(cfg["num-rounds"]),
        evaluate_fn=clock,
    )
    seconds = [b - a for a, b in itertools.pairwise(stamps)]
    Path(str(cfg["output-dir"]), ROUNDS_FILE).write_text(json.dumps({"round-seconds": seconds}))


@client.train()
def train(msg: Message, context: Context) -> Message:
    """The received weights plus a constant of this node's own, weighted as one example.

    Each node adds its own constant: replies must differ, or the SuperLink, which keeps chunks by
    their SHA-256, would take identical replies from one node only.
    """
    offset = np.float32(1 + context.node_id % 997)
    arrays = ArrayRecord([a.numpy() + offset for a in msg.content["arrays"].values()])
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """A constant metric."""
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "loss": 0.0})}), reply_to=msg)
