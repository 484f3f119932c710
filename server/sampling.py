"""Seeded client sampling: the same seed samples the same partitions in every round, on every backend.

Flower's strategies sample with ``random.sample`` over the Grid's node ids, unseeded (Flower issue
#1845), and node ids differ between deployments, attempts and restarts. So, when a strategy sends to
fewer than all online nodes (:func:`samples`), the round loop first asks each node it does not know
yet which partition it serves (:func:`identify_messages`: a query message, answered by
client/client_app.py), then lets the strategy sample from a :class:`~server.grid.PartitionGrid` (the
nodes in partition order) with ``random`` seeded from the run's seed and the round (:func:`seeded`).
Sampling stays Flower's; the same positions are the same partitions, in every attempt and on every
backend, as long as the same partitions are online.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp.strategy import Strategy


@contextmanager
def seeded(seed: int, server_round: int) -> Iterator[None]:
    """``random`` seeded from the run's ``seed`` and the round inside the block; its state outside kept."""
    state = random.getstate()
    random.seed(f"fedimdb-sampling/{seed}/{server_round}")  # a str seeds alike in every process
    try:
        yield
    finally:
        random.setstate(state)


def samples(strategy: Strategy) -> bool:
    """Whether ``strategy`` sends train or evaluate messages to fewer than all online nodes."""
    fractions = (getattr(strategy, "fraction_train", 1.0), getattr(strategy, "fraction_evaluate", 1.0))
    return any(0.0 < f < 1.0 for f in fractions)


def identify_messages(nodes: Iterable[int], server_round: int) -> list[Message]:
    """A query to each node: which partition it serves (its reply's metrics carry the partition id)."""
    return [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY, group_id=str(server_round))
        for node in nodes
    ]
