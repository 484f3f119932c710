"""Flower Messages without a network: a Grid whose nodes are functions answering at once, and honest clients.

Their tests use conftest's ``task_identity`` fixture, which Flower's Message constructor needs. Used by
the tests of the round loop (tests/test_round_loop.py) and of continuing a run
(tests/test_continuation.py); each runs in milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.supercore.run import Run

from fedimdb.protocol import (
    ARRAYS,
    METRICS,
    PARTITION_ID,
    EvalMetrics,
    TrainMetrics,
    arrays_of,
    received_state,
    transport_arrays,
)
from fedimdb.training import EvalResult
from server.loop import Federation
from server.records import RoundLog

SUPERLINK = 1  # the node id the SuperLink answers with for a node that is gone
PARTITIONS = {11: 0, 12: 1, 13: 2}  # node id -> partition id
Node = Callable[[Message], Message | None]


class InstantGrid(Grid):
    """A Grid whose nodes answer at once, last first; ``online`` are the node ids it lists.

    A node the SuperLink answers for (an error reply from it) is offline from then on.
    """

    def __init__(self, nodes: Mapping[int, Node]) -> None:
        self.nodes = dict(nodes)
        self.online = set(nodes)
        self.pushed: list[Message] = []

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.online)

    def get_nodes(self) -> Iterable[NodeInfo]:
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.pushed.append(msg)
        return [msg.metadata.message_id for msg in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self.push_messages(messages)
        answered = [(msg, self.nodes[msg.metadata.dst_node_id](msg)) for msg in reversed(messages)]  # last first
        self.online -= {m.metadata.dst_node_id for m, r in answered if r and r.metadata.src_node_id == SUPERLINK}
        return [reply for _, reply in answered if reply is not None]

    def sent(self, message_type: str) -> list[int]:
        """The nodes that were sent messages of this type, once per message, sorted (Flower samples at random)."""
        return sorted(msg.metadata.dst_node_id for msg in self.pushed if msg.metadata.message_type == message_type)


def weights(value: float) -> ArrayRecord:
    """A global model of one tensor, ``w``, of three equal values."""
    return ArrayRecord({"w": torch.full((3,), value)})


def honest(examples: int = 64, step: float = 1.0, partitions: Mapping[int, int] = PARTITIONS) -> Node:
    """A client that adds ``step`` to every weight it gets, evaluates when asked, and tells its partition
    (``partitions``: node id to partition id) when queried."""

    def answer(msg: Message) -> Message:
        partition = partitions[msg.metadata.dst_node_id]
        if msg.metadata.message_type == MessageType.QUERY:
            return Message(RecordDict({METRICS: MetricRecord({PARTITION_ID: partition})}), reply_to=msg)
        if msg.metadata.message_type.startswith("evaluate"):
            metrics = EvalMetrics(partition, 32, 0.5, 0.75).to_record()
            return Message(RecordDict({METRICS: metrics}), reply_to=msg)
        arrays = {k: torch.from_numpy(v.numpy() + step) for k, v in arrays_of(msg.content).items()}
        metrics = TrainMetrics(partition, examples, 0.5, 2, 1.0, 64.0, 0.1).to_record()
        return Message(RecordDict({ARRAYS: ArrayRecord(arrays), METRICS: metrics}), reply_to=msg)

    return answer


def wire_client(step: float, transport: str, reference: Mapping[str, torch.Tensor]) -> Node:
    """A client as client/task.py is on the wire: it decodes the global model it gets (an int8 one against
    ``reference``), adds ``step`` to every weight and encodes its model against the one it received."""

    def answer(msg: Message) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return honest()(msg)
        received = received_state(arrays_of(msg.content), reference)
        trained = {k: v + step for k, v in received.items()}
        metrics = TrainMetrics(PARTITIONS[msg.metadata.dst_node_id], 64, 0.5, 2, 1.0, 64.0, 0.1).to_record()
        arrays = transport_arrays(trained, transport, reference=received)
        return Message(RecordDict({ARRAYS: arrays, METRICS: metrics}), reply_to=msg)

    return answer


class OneTensorRun:
    """What the tests' federations over an InstantGrid share: a model of one tensor ``w`` of ``size`` zeros, each
    round's global model kept in ``models``, each round's row finished with a fixed central evaluation. A
    subclass sets ``log``, ``federation`` and ``size``."""

    log: RoundLog
    federation: Federation
    size: int

    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """server_app's RoundEnd, in short."""
        self.models.append(arrays["w"].numpy().copy())
        if server_round > 0:
            self.log.finish_round(server_round, EvalResult(0.7, 0.5, 100), 0.0)
        return MetricRecord({"accuracy": 0.5})

    def __call__(self, num_rounds: int) -> Result:
        self.models: list[np.ndarray] = []
        return self.federation.run(ArrayRecord({"w": torch.zeros(self.size)}), num_rounds, self.end_round)
