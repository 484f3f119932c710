"""The round loop, in one place: wait, send, screen, resend, aggregate, evaluate, end the round.

Flower's ``Strategy.start`` runs each round as configure, send and receive, aggregate. This loop
runs the same steps with Flower's strategies (sampling and aggregation stay theirs) and adds what a
real deployment needs between them, each step visible in :meth:`Federation.train`:

1. wait a bounded time for enough clients to be online (:func:`wait_for_nodes`); when the strategy
   samples, ask the nodes not known yet which partition they serve, and let it sample seeded, by
   partition (server/sampling.py);
2. send the strategy's train messages, the global model encoded for the wire (server/wire.py);
3. screen the replies (server/checks.py): error replies and unusable updates are refused;
4. with too few usable updates, send the train message again to the clients that failed and are
   still online, up to ``round-retries`` times; then fail the run with :class:`RoundFailed`, which
   names every client and its reason;
5. aggregate the usable updates in partition order, so the floating-point sums (and the run) are
   the same for the same seed whatever order the replies arrived in.

Then the clients' evaluate exchange (with ``local-eval = with-train`` the train messages carry it,
and one evaluate exchange follows the last round) and ``end_round`` (Flower's ``evaluate_fn``:
archive and evaluate the global model, server/server_app.py). With a differentially private
strategy (Flower's DP wrapper, server/strategy.py) the (epsilon, delta) spent is told after each
aggregation, and a round the wrapper refuses because the budget is spent ends the run after the
round before. What happens is told to a :class:`RoundObserver` (server/recorder.py); the loop keeps
no record of its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Protocol

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from flwr.supercore.privacy_accounting import PrivacySpent

from fedimdb.config import RunConfig
from fedimdb.protocol import EVALUATE_RECEIVED, partition_of
from fedimdb.run_record import RECURS
from fedimdb.waiting import wait_until
from server.checks import Expected, Refusal, addressees_of, failure, raised_alike, screen
from server.grid import PartitionGrid
from server.records import partition_order
from server.sampling import identify_messages, samples, seeded
from server.secure import SecureAggregation
from server.wire import Decoder, Wire

NODE_WAIT_STEP = 1.0  # seconds between checks for online clients
EndRound = Callable[[int, ArrayRecord], MetricRecord | None]
"""Flower's ``evaluate_fn``: called with round 0 and the initial model, then after every round."""


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
        return cls(
            cfg.num_clients,
            cfg.min_reply_fraction,
            cfg.round_retries,
            cfg.round_timeout,
            cfg.node_wait_timeout,
            max_examples,
        )

    def needed(self, sampled: int) -> int:
        """Usable updates a round with ``sampled`` clients needs."""
        return max(1, math.ceil(self.min_reply_fraction * sampled - 1e-9))

    def online_before(self, server_round: int, first_round: int = 1) -> int:
        """Clients that must be online before a round: all before the run's first, then enough to succeed."""
        return self.num_clients if server_round == first_round else self.needed(self.num_clients)


def wait_for_nodes(grid: Grid, needed: int, timeout: float) -> list[int]:
    """The online node ids once at least ``needed`` are online; RoundFailed after ``timeout`` s."""
    nodes: list[int] = []

    def enough() -> bool:
        nodes[:] = grid.get_node_ids()
        return len(nodes) >= needed

    if not wait_until(enough, timeout, NODE_WAIT_STEP):
        raise RoundFailed(
            f"only {len(nodes)} clients online after {timeout:.0f} s, {needed} needed: start the missing "
            "SuperNodes, check they reach the SuperLink, or lower num-clients / min-reply-fraction"
        )
    return nodes


class RoundObserver(Protocol):
    """What the round loop tells as it goes (server/recorder.py records it)."""

    def round_started(self, server_round: int, messages: Sequence[Message], online: int) -> None:
        """The round's train messages go out; ``online`` clients were online."""

    def sent(self, server_round: int, messages: Sequence[Message]) -> None:
        """The round's messages go out (partition queries, train, resent train, or evaluate)."""

    def received(self, server_round: int, replies: Sequence[Message]) -> None:
        """Replies to the round's messages came in (error replies too)."""

    def refused(self, server_round: int, refusal: Refusal) -> None:
        """A train reply is not aggregated."""

    def retried(self, server_round: int) -> None:
        """The round's train message is sent again to the clients that failed."""

    def accepted(self, server_round: int, ordered: Sequence[Message]) -> None:
        """These usable train replies, in partition order, are about to be aggregated."""

    def aggregated(self, server_round: int, sent: ArrayRecord, aggregate: ArrayRecord | None, seconds: float) -> None:
        """The strategy turned the global model ``sent`` into ``aggregate`` in ``seconds``."""

    def released(self, server_round: int, epsilon: float, delta: float) -> None:
        """The round's aggregate was released with differential privacy: the run has spent (epsilon, delta)."""

    def budget_spent(self, server_round: int, reason: str) -> None:
        """The privacy budget has no room for this round: the run ends after the one before it."""

    def evaluated(self, server_round: int, replies: Sequence[Message]) -> None:
        """The clients' evaluations of the round's global model, in partition order."""

    def round_failed(self, server_round: int) -> None:
        """The round ends without enough usable updates; the run fails."""


@dataclass
class TrainExchange:
    """One round's train messages and what is known of their replies so far.

    Parameters
    ----------
    messages : list[Message]
        The strategy's train messages, one per sampled node.
    expected : Expected
        What a usable reply to them carries.
    decode : Decoder
        Turns a usable reply back into float32.
    """

    messages: list[Message]
    expected: Expected
    decode: Decoder
    pushed: list[Message] = field(default_factory=list)  # every message sent, resent ones too (ids set on push)
    usable: list[Message] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    def addressees(self) -> dict[str, int]:
        """Message id to the node it went to, for every message pushed so far."""
        return addressees_of(self.pushed)

    def again(self, online: set[int]) -> list[Message]:
        """New copies of the train messages to the sampled nodes still online without a usable update."""
        waiting = online - {msg.metadata.src_node_id for msg in self.usable}
        return [_copy(msg) for msg in self.messages if msg.metadata.dst_node_id in waiting]


class Federation:
    """Runs the rounds of a Flower strategy over a Grid, guarded by a :class:`RoundPolicy`.

    Parameters
    ----------
    strategy : Strategy
        The Flower strategy that samples clients and aggregates their replies.
    grid : Grid
        Where messages go and replies come from.
    observer : RoundObserver
        Told what happens (rows, metrics, archives: server/recorder.py).
    policy : RoundPolicy
        When a round fails, and what is done about it.
    wire : Wire
        How the weights travel.
    evaluate_received : bool, default False
        Clients evaluate the global model they receive in train messages (from round 2 on, as the
        model of round 1 arrives then); no evaluate messages during the rounds, one exchange after
        the last.
    seed : int, default 0
        The run's seed: the strategy samples the same partitions for the same seed and round.
    secure : SecureAggregation, optional
        Train with Flower's SecAgg+ (server/secure.py): the strategy samples and configures the round, and
        the server learns only the mean update (None: every reply's weights are screened and aggregated).
    """

    def __init__(
        self,
        strategy: Strategy,
        grid: Grid,
        observer: RoundObserver,
        policy: RoundPolicy,
        wire: Wire,
        evaluate_received: bool = False,
        seed: int = 0,
        secure: SecureAggregation | None = None,
    ) -> None:
        self.strategy, self.grid, self.observer = strategy, grid, observer
        self.policy, self.wire, self.evaluate_received, self.seed = policy, wire, evaluate_received, seed
        self.secure = secure
        self.partitions: dict[int, int] = {}  # node id -> partition id, as replies named them
        self.first_round = 1

    def run(self, arrays: ArrayRecord, num_rounds: int, end_round: EndRound, first_round: int = 1) -> Result:
        """Rounds ``first_round`` to ``num_rounds`` from the global model ``arrays`` (the initial one, ended as
        round 0, when ``first_round`` is 1); the result holds the final global model and the rounds' metrics."""
        log(INFO, "Starting %s strategy: rounds %s to %s", type(self.strategy).__name__, first_round, num_rounds)
        self.strategy.summary()
        result, self.first_round = Result(arrays=arrays), first_round
        if first_round == 1:
            self._end(result, 0, end_round)
        last = num_rounds
        for server_round in range(first_round, num_rounds + 1):
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            try:
                aggregate, metrics = self.train(server_round, result.arrays)
            except PrivacyBudgetExhausted as exc:  # raised before the round's messages go out
                log(WARNING, "round %s not run, the privacy budget is spent: %s", server_round, exc)
                self.observer.budget_spent(server_round, str(exc))
                last = server_round - 1
                break
            result.arrays = aggregate if aggregate is not None else result.arrays
            if metrics is not None:
                result.train_metrics_clientapp[server_round] = metrics
            if not self.evaluate_received:
                self._evaluate(result, server_round)
            self._end(result, server_round, end_round)
        if self.evaluate_received and last >= first_round:
            self._evaluate(result, last)
        return result

    def train(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """One round's training: wait, send, screen, resend while too few are usable, aggregate."""
        awaited = self.policy.online_before(server_round, self.first_round)
        online = wait_for_nodes(self.grid, awaited, self.policy.node_wait_timeout)
        self._identify(server_round, online)
        outgoing = self.wire.outgoing(arrays)
        config = ConfigRecord({EVALUATE_RECEIVED: True} if self.evaluate_received and server_round > 1 else {})
        with seeded(self.seed, server_round):
            messages = self.wire.carry(
                self.strategy.configure_train(server_round, arrays, config, self._by_partition()), outgoing
            )
        self.observer.round_started(server_round, messages, len(online))
        if self.secure is not None:
            return self._train_securely(server_round, arrays, messages, self.secure)
        exchange = TrainExchange(messages, Expected.of(outgoing, self.policy.max_examples), self.wire.decoder(outgoing))
        self._exchange(server_round, exchange, messages)
        needed = self.policy.needed(len(messages))
        for _ in range(self.policy.retries):
            if len(exchange.usable) >= needed:
                break
            self._resend(server_round, exchange)
        if len(exchange.usable) < needed:
            self.observer.round_failed(server_round)
            raise self._failed(server_round, exchange, needed)
        return self._aggregate(server_round, arrays, partition_order(exchange.usable))

    def _train_securely(
        self, server_round: int, arrays: ArrayRecord, messages: list[Message], secure: SecureAggregation
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's training through SecAgg+: the global model plus the clients' mean update, which is all the
        server learns of them (their replies' metrics are recorded; there are no weights to screen or resend)."""
        start = time.perf_counter()
        done = secure.train(self.grid, server_round, messages, self.observer)
        for msg in done.failed:
            self._refuse(server_round, failure(msg, done.addressees, self.partitions))
        usable = partition_order(done.replies)
        needed = self.policy.needed(len(messages))
        if done.mean_update is None or len(usable) < needed:
            self.observer.round_failed(server_round)
            raise RoundFailed(
                f"round {server_round}: SecAgg+ aggregated {len(usable) if done.mean_update else 0} of {len(messages)} "
                f"sampled clients, {needed} needed: {len(done.failed)} error replies; see the clients' logs"
            )
        self.partitions.update((msg.metadata.src_node_id, partition_of(msg.content)) for msg in usable)
        self.observer.accepted(server_round, usable)
        update = done.mean_update
        aggregate = ArrayRecord({k: Array(a.numpy() + update[k].numpy()) for k, a in arrays.items()})
        self.observer.aggregated(server_round, arrays, aggregate, time.perf_counter() - start)
        return aggregate, None

    def _identify(self, server_round: int, online: Sequence[int]) -> None:
        """When the strategy samples: ask the online nodes not known yet which partition they serve."""
        unknown = [node for node in online if node not in self.partitions]
        if not unknown or not samples(self.strategy):
            return
        messages = identify_messages(unknown, server_round)
        self.observer.sent(server_round, messages)
        replies = list(self.grid.send_and_receive(messages, timeout=self.policy.timeout))
        self.observer.received(server_round, replies)
        self.partitions.update((r.metadata.src_node_id, partition_of(r.content)) for r in replies if not r.has_error())

    def _by_partition(self) -> Grid:
        """The grid the strategy samples from: the online nodes in partition order (server/sampling.py)."""
        return PartitionGrid(self.grid, self.partitions)

    def _failed(self, server_round: int, exchange: TrainExchange, needed: int) -> RoundFailed:
        """What fails the run: every client and its reason, and the fix (marked :data:`RECURS` when every
        client's ClientApp raised the same error, which another attempt would meet again)."""
        sampled = len(exchange.messages)
        alike = not exchange.usable and raised_alike(exchange.refused, sampled)
        fix = (
            "Every client's ClientApp raised the same error: fix its cause"
            if alike
            else "See the clients' logs; lower min-reply-fraction to go on with fewer"
        )
        return RoundFailed(
            f"{RECURS + ' ' if alike else ''}round {server_round}: {len(exchange.usable)} usable updates from {sampled} "
            "sampled clients, "
            f"{needed} needed (min-reply-fraction {self.policy.min_reply_fraction}, after "
            f"{self.policy.retries} retries): {'; '.join(map(str, exchange.refused))}. {fix}"
        )

    def _exchange(self, server_round: int, exchange: TrainExchange, messages: list[Message]) -> None:
        """Send train messages, wait for their replies, screen them into ``exchange``."""
        self.observer.sent(server_round, messages)
        exchange.pushed += messages
        replies = list(self.grid.send_and_receive(messages, timeout=self.policy.timeout)) if messages else []
        self.observer.received(server_round, replies)
        screened = screen(replies, exchange.expected, exchange.decode, exchange.addressees(), self.partitions)
        self.partitions.update((msg.metadata.src_node_id, partition_of(msg.content)) for msg in screened.usable)
        for refusal in screened.refused:
            self._refuse(server_round, refusal)
        exchange.usable += screened.usable
        exchange.refused += screened.refused

    def _refuse(self, server_round: int, refusal: Refusal) -> None:
        """Log and record a reply that is not aggregated."""
        log(WARNING, "round %s: node %s %s: %s", server_round, refusal.node, refusal.status, refusal.reason)
        self.observer.refused(server_round, refusal)

    def _resend(self, server_round: int, exchange: TrainExchange) -> None:
        """The round's train messages again, to the sampled clients still online without a usable update."""
        again = exchange.again(set(self.grid.get_node_ids()))
        nodes = [msg.metadata.dst_node_id for msg in again]
        log(INFO, "round %s: too few usable updates; sending the train message again to %s", server_round, nodes)
        self.observer.retried(server_round)
        self._exchange(server_round, exchange, again)

    def _aggregate(
        self, server_round: int, arrays: ArrayRecord, ordered: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The strategy's aggregate of the usable replies, in partition order, in the global model's dtypes."""
        self.observer.accepted(server_round, ordered)
        start = time.perf_counter()
        aggregate, metrics = self.strategy.aggregate_train(server_round, ordered)
        aggregate = None if aggregate is None else in_dtypes_of(arrays, aggregate)
        self.observer.aggregated(server_round, arrays, aggregate, time.perf_counter() - start)
        if (spent := privacy_spent(self.strategy)) is not None and aggregate is not None:
            self.observer.released(server_round, spent.epsilon, spent.delta)
        return aggregate, metrics

    def _evaluate(self, result: Result, server_round: int) -> None:
        """The clients' evaluate exchange of the global model; the aggregate joins ``result``."""
        outgoing = self.wire.outgoing(result.arrays)
        with seeded(self.seed, server_round):
            messages = self.wire.carry(
                self.strategy.configure_evaluate(server_round, result.arrays, ConfigRecord(), self._by_partition()),
                outgoing,
            )
        if not messages:
            return
        self.observer.sent(server_round, messages)
        replies = partition_order(self.grid.send_and_receive(messages, timeout=self.policy.timeout))
        self.observer.received(server_round, replies)
        if not replies:
            return
        self.observer.evaluated(server_round, replies)
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            result.evaluate_metrics_clientapp[server_round] = metrics

    @staticmethod
    def _end(result: Result, server_round: int, end_round: EndRound) -> None:
        """End a round (0: before the first) with the central evaluation of the global model."""
        metrics = end_round(server_round, result.arrays)
        if metrics is not None:
            result.evaluate_metrics_serverapp[server_round] = metrics


def privacy_spent(strategy: Strategy) -> PrivacySpent | None:
    """The (epsilon, delta) a differentially private strategy has spent so far (None: it is not one)."""
    return strategy.privacy_spent() if isinstance(strategy, DifferentialPrivacyFixedClippingBase) else None


def in_dtypes_of(model: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
    """``aggregate`` with each array in the dtype of ``model``'s: Flower's FedAdam, FedYogi and FedAdagrad scale
    by a NumPy float64 scalar, which would turn a float32 global model into float64 round by round."""
    if all(aggregate[k].dtype == model[k].dtype for k in aggregate):
        return aggregate
    return ArrayRecord({k: Array(a.numpy().astype(model[k].numpy().dtype, copy=False)) for k, a in aggregate.items()})


def _copy(sent: Message) -> Message:
    """A new message with the content, addressee and type of ``sent`` (a message is pushed once)."""
    meta = sent.metadata
    return Message(
        content=sent.content, dst_node_id=meta.dst_node_id, message_type=meta.message_type, group_id=meta.group_id
    )
