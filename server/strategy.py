"""Strategy selection, and a recording wrapper around Flower's own strategies.

:func:`make_strategy` builds the Flower strategy named in the run config and wraps it in
:class:`RecordingStrategy`, which (1) records every reply in a :class:`~server.records.RoundLog`,
(2) orders replies by partition id before the wrapped strategy aggregates them, so the
floating-point sums (and the run) are the same for the same seed whatever order the replies
arrived in, (3) times each round, (4) hands each client's returned weights to an optional
archiver, (5) with ``local-eval = with-train``, has clients evaluate the global model they
receive inside the next round's train message instead of in evaluate messages of their own, with
one evaluate exchange after the last round (:meth:`RecordingStrategy.evaluate_last`): the same
evaluations with one exchange a round fewer, and (6) guards every round (:class:`RoundPolicy`):
it waits a bounded time for enough clients, refuses unusable updates (server/checks.py) and
fails a round with too few usable ones — repeating it with the clients that failed, or failing
the run with :class:`RoundFailed`, which names every client and its reason. Aggregation itself
stays Flower's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from fedimdb.config import FULL_PRECISION, LOCAL_EVAL_WITH_TRAIN, RunConfig
from fedimdb.metrics.server import ServerMetrics
from fedimdb.protocol import (
    ARRAYS,
    EVALUATE_RECEIVED,
    INT8,
    NUM_EXAMPLES,
    TransportError,
    arrays_of,
    metrics_of,
    partition_of,
    received_state,
    state_view,
    transport_arrays,
)
from fedimdb.weights import ClientUpdate
from server.checks import Expected, train_reply_problem
from server.records import ClientStatus, RoundLog, partition_order
from server.scrutiny import WeightLog

if TYPE_CHECKING:
    import torch

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}

ClientArchiver = Callable[[int, int, ArrayRecord], None]
"""Called with (round, partition id, the client's returned arrays)."""
NODE_WAIT_STEP = 1.0  # seconds between checks for online clients


class RoundFailed(RuntimeError):
    """A round ended without enough usable updates, or without enough clients online."""


@dataclass(frozen=True)
class RoundPolicy:
    """How a round may fail, and what is done about it.

    Parameters
    ----------
    num_clients : int
        Clients of the run: all of them must be online before round 1.
    min_reply_fraction : float
        Share of the sampled clients (rounded up, at least 1) whose updates must be usable; also
        the share of ``num_clients`` that must be online before a later round.
    retries : int
        Times a failed round's train messages are sent again to the clients that failed.
    timeout : float
        Seconds to wait for the replies of one exchange.
    node_wait_timeout : float
        Seconds to wait for enough clients to be online before a round.
    max_examples : int | None
        The most training examples a reply may claim (None: only positive whole numbers).
    """

    num_clients: int = 1
    min_reply_fraction: float = 0.5
    retries: int = 1
    timeout: float = 3600.0
    node_wait_timeout: float = 600.0
    max_examples: int | None = None

    @classmethod
    def of(cls, cfg: RunConfig) -> RoundPolicy:
        """The policy a run config asks for; a capped local budget bounds the example count."""
        max_examples = cfg.max_steps * cfg.batch_size if cfg.max_steps else None
        return cls(cfg.num_clients, cfg.min_reply_fraction, cfg.round_retries, cfg.round_timeout,
                   cfg.node_wait_timeout, max_examples)  # fmt: skip

    def needed(self, sampled: int) -> int:
        """Usable updates a round with ``sampled`` clients needs."""
        return max(1, math.ceil(self.min_reply_fraction * sampled - 1e-9))

    def online_before(self, server_round: int) -> int:
        """Clients that must be online before a round: all before the first, then enough to succeed."""
        return self.num_clients if server_round == 1 else self.needed(self.num_clients)


def wait_for_nodes(grid: Grid, needed: int, timeout: float) -> list[int]:
    """The online node ids once at least ``needed`` are online; RoundFailed after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < needed:
        if time.monotonic() >= deadline:
            raise RoundFailed(
                f"only {len(nodes)} clients online after {timeout:.0f} s, {needed} needed: start the missing "
                "SuperNodes, check they reach the SuperLink, or lower num-clients / min-reply-fraction"
            )
        time.sleep(NODE_WAIT_STEP)
    return nodes


class RecordingStrategy(Strategy):
    """A Flower strategy that records, orders and times the replies of the strategy it wraps.

    Parameters
    ----------
    inner : Strategy
        The Flower strategy that samples clients and aggregates their replies.
    round_log : RoundLog
        Where the per-round and per-client rows go.
    metrics : ServerMetrics
        The run's Prometheus metrics: rounds, clients online and sampled, bytes, aggregation time.
    archive_client : ClientArchiver, optional
        Called with every successful train reply's arrays (e.g. to archive client weights).
    evaluate_received : bool, default False
        Ask clients to evaluate the global model they receive in train messages (from round 2 on,
        as the model of round 1 arrives then), and send no evaluate messages during the rounds.
    transport : str, default "float32"
        dtype of the weights in messages, both ways; replies are turned back into float32 before
        anything else sees them.
    policy : RoundPolicy, optional
        When a round fails, and what is done about it.
    weight_log : WeightLog, optional
        Where each round's client updates are compared with the aggregated one (None: they are not).
    reference : Mapping[str, torch.Tensor], optional
        The tensors that travel as every end loads them before round 1 (the initial global model):
        ``int8`` transport sends the global model as its difference from this state.
    """

    def __init__(
        self,
        inner: Strategy,
        round_log: RoundLog,
        metrics: ServerMetrics,
        archive_client: ClientArchiver | None = None,
        evaluate_received: bool = False,
        transport: str = FULL_PRECISION,
        policy: RoundPolicy | None = None,
        weight_log: WeightLog | None = None,
        reference: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.inner = inner
        self.round_log = round_log
        self.metrics = metrics
        self.archive_client = archive_client
        self.evaluate_received = evaluate_received
        self.transport = transport
        self.policy = policy or RoundPolicy()
        self.weight_log = weight_log
        self.reference = reference
        self._global: ArrayRecord | None = None  # this round's global model as sent (float32)
        self._received: dict[str, torch.Tensor] | None = None  # ... and as the clients decode it (int8)
        self._grid: Grid | None = None
        self._sent: dict[int, Message] = {}  # node id -> this round's train message
        self._pushed: list[Message] = []  # every train message of this round, resent ones too (ids set on push)
        self._expected: Expected | None = None

    def _outgoing(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global model as the messages carry it."""
        if self.transport == FULL_PRECISION:
            return arrays
        return transport_arrays(arrays.to_torch_state_dict(), self.transport, self.reference)

    def _decoded(self, msg: Message) -> str | None:
        """A usable reply's arrays back in float32, in place; why they cannot be decoded, or None."""
        if self.transport == FULL_PRECISION:
            return None
        try:
            msg.content[ARRAYS] = ArrayRecord(received_state(arrays_of(msg.content), self._received))
        except TransportError as exc:
            return str(exc)
        return None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages, once enough clients are online; the round's clock starts here."""
        online = wait_for_nodes(grid, self.policy.online_before(server_round), self.policy.node_wait_timeout)
        if self.evaluate_received and server_round > 1:
            config = ConfigRecord({**config, EVALUATE_RECEIVED: True})
        outgoing = self._outgoing(arrays)
        self._global = arrays
        self._received = received_state(outgoing, self.reference) if self.transport == INT8 else None
        messages = list(self.inner.configure_train(server_round, outgoing, config, grid))
        self._grid, self._expected = grid, Expected.of(outgoing, self.policy.max_examples)
        self._sent = {msg.metadata.dst_node_id: msg for msg in messages}
        self._pushed = list(messages)
        self.round_log.start_round(server_round, len(messages))
        self.metrics.round_started_now(server_round, len(messages), len(online))
        return self._sending(messages)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies (repeating the round's failures if too few are usable), record, archive, aggregate."""
        usable = self._screen(server_round, replies)
        needed = self.policy.needed(len(self._sent))
        for _ in range(self.policy.retries):
            if len(usable) >= needed:
                break
            usable += self._screen(server_round, self._resend(server_round, usable))
        if len(usable) < needed:
            self.round_log.finish_round(server_round, None, 0.0)
            reasons = "; ".join(self.round_log.reasons(server_round))
            raise RoundFailed(
                f"round {server_round}: {len(usable)} usable updates from {len(self._sent)} sampled clients, "
                f"{needed} needed (min-reply-fraction {self.policy.min_reply_fraction}, after "
                f"{self.policy.retries} retries): {reasons}. See the clients' logs; lower min-reply-fraction to "
                "go on with fewer"
            )
        ordered = partition_order(usable)
        self.round_log.record_train(server_round, ordered)
        partitions = [partition_of(msg.content) for msg in ordered]
        if self.archive_client is not None:
            for partition, msg in zip(partitions, ordered, strict=True):
                self.archive_client(server_round, partition, arrays_of(msg.content))
        self.metrics.updates_used(server_round, partitions)
        updates = self._client_updates(ordered)  # before aggregating: FedMedian and others empty the replies
        start = time.perf_counter()
        aggregate = self.inner.aggregate_train(server_round, ordered)
        self.metrics.aggregated(time.perf_counter() - start)
        if (
            updates is not None
            and self.weight_log is not None
            and aggregate[0] is not None
            and self._global is not None
        ):
            sent, new = state_view(self._global), state_view(aggregate[0])
            self.weight_log.client_updates(server_round, sent, new, updates)
        return aggregate

    def _client_updates(self, ordered: list[Message]) -> list[ClientUpdate] | None:
        """The aggregated replies' weights and example counts, for the weight log (None: no weight log)."""
        if self.weight_log is None:
            return None
        return [
            ClientUpdate(
                partition_of(msg.content),
                int(cast("int | float", metrics_of(msg.content)[NUM_EXAMPLES])),
                state_view(arrays_of(msg.content)),
            )
            for msg in ordered
        ]

    def _screen(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The usable train replies; the others are recorded (and logged) with their reason."""
        assert self._expected is not None, "configure_train comes first"
        usable: list[Message] = []
        replies = list(replies)
        self.metrics.received(msg.content for msg in replies if not msg.has_error())
        reason: str | None
        for msg in replies:
            if msg.has_error():
                status, reason = ClientStatus.FAILED, f"error reply {msg.error.code}: {msg.error.reason}"
            else:
                status, reason = (
                    ClientStatus.REFUSED,
                    train_reply_problem(msg.content, self._expected) or self._decoded(msg),
                )
            if msg.has_error() or reason is not None:
                node = self._addressee(msg)
                log(WARNING, "round %s: node %s %s: %s", server_round, node, status, reason)
                self.round_log.record_failure(server_round, msg, node, status, str(reason))
            else:
                usable.append(msg)
        return usable

    def _addressee(self, reply: Message) -> int:
        """The node a reply answers for: the SuperLink itself sends the error reply of a node that died."""
        sent = {msg.metadata.message_id: msg.metadata.dst_node_id for msg in self._pushed}
        return sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def _resend(self, server_round: int, usable: list[Message]) -> list[Message]:
        """This round's train messages again, to the sampled clients still online without a usable update."""
        assert self._grid is not None
        done = {msg.metadata.src_node_id for msg in usable}
        online = set(self._grid.get_node_ids())
        again = [node for node in self._sent if node not in done and node in online]
        log(INFO, "round %s: too few usable updates; sending the train message again to %s", server_round, again)
        self.round_log.retried(server_round)
        messages = self._sending(_copy_to(self._sent[node], node) for node in again)
        self._pushed += messages
        return list(self._grid.send_and_receive(messages, timeout=self.policy.timeout)) if messages else []

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluate messages; none when the train messages carry the evaluation."""
        if self.evaluate_received:
            return []
        return self._sending(self.inner.configure_evaluate(server_round, self._outgoing(arrays), config, grid))

    def _sending(self, messages: Iterable[Message]) -> list[Message]:
        """``messages``, counted as sent."""
        messages = list(messages)
        self.metrics.sent(msg.content for msg in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Record the local evaluations, then aggregate them in partition order."""
        ordered = partition_order(replies)
        self.metrics.received(msg.content for msg in ordered if not msg.has_error())
        if not ordered:
            return None
        self.round_log.record_evaluate(server_round, ordered)
        return self.inner.aggregate_evaluate(server_round, ordered)

    def evaluate_last(self, grid: Grid, arrays: ArrayRecord, server_round: int, timeout: float) -> None:
        """With ``evaluate_received``: the evaluate exchange of the last round's global model."""
        if not self.evaluate_received:
            return
        messages = self._sending(
            self.inner.configure_evaluate(server_round, self._outgoing(arrays), ConfigRecord(), grid)
        )
        self.aggregate_evaluate(server_round, grid.send_and_receive(messages, timeout=timeout))

    def summary(self) -> None:
        """The wrapped strategy's summary."""
        self.inner.summary()


def _copy_to(sent: Message, node: int) -> Message:
    """A new message with the content and type of ``sent``, for ``node``."""
    meta = sent.metadata
    return Message(content=sent.content, dst_node_id=node, message_type=meta.message_type, group_id=meta.group_id)


def strategy_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Keyword arguments of the Flower strategy named by ``cfg.strategy``.

    Flower's sampling waits without limit until ``min_available_nodes`` are online, so these are
    the fewest clients a round can succeed with: with a client gone, later rounds go on with the
    others (the :class:`RoundPolicy` decides whether that is enough; all clients are awaited, with
    a timeout, before round 1).
    """
    least = RoundPolicy.of(cfg).needed(cfg.num_clients)
    kwargs: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": max(1, min(least, math.ceil(cfg.fraction_train * cfg.num_clients))),
        "min_evaluate_nodes": max(1, min(least, math.ceil(cfg.fraction_evaluate * cfg.num_clients))),
        "min_available_nodes": least,
    }
    if cfg.strategy == "fedprox":
        kwargs["proximal_mu"] = cfg.proximal_mu
    elif cfg.strategy == "fedavgm":
        kwargs["server_momentum"] = cfg.server_momentum
    elif cfg.strategy in ("fedadam", "fedyogi", "fedadagrad"):
        kwargs["eta"] = cfg.server_learning_rate
    elif cfg.strategy == "fedtrimmedavg":
        kwargs["beta"] = cfg.trimmed_beta
    elif cfg.strategy == "krum":
        kwargs["num_malicious_nodes"] = cfg.krum_malicious_nodes
    return kwargs


def make_strategy(
    cfg: RunConfig,
    round_log: RoundLog,
    metrics: ServerMetrics,
    archive_client: ClientArchiver | None = None,
    weight_log: WeightLog | None = None,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> RecordingStrategy:
    """Flower's strategy named by ``cfg.strategy``, wrapped so that every round is recorded.

    ``reference`` is the initial global model, as every end loads it (needed by ``int8`` transport).
    """
    inner = STRATEGY_CLASSES[cfg.strategy](**strategy_kwargs(cfg))
    evaluate_received = cfg.local_eval == LOCAL_EVAL_WITH_TRAIN and cfg.fraction_evaluate > 0
    return RecordingStrategy(
        inner,
        round_log,
        metrics,
        archive_client,
        evaluate_received,
        cfg.weight_transport,
        RoundPolicy.of(cfg),
        weight_log,
        reference,
    )
