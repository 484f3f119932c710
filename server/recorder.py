"""What the round loop tells, recorded: table rows, Prometheus metrics, client weights, weight statistics.

:class:`Recorder` is the :class:`~server.loop.RoundObserver` of a run. It keeps the rows of
rounds.csv and clients.csv (:class:`~server.records.RoundLog`), the run's metrics, each aggregated
client's weights (through an archiver) and, with ``weight-stats``, how each client's update compares
with the aggregated one (:class:`~server.scrutiny.WeightLog`). It sends nothing and decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from flwr.app import ArrayRecord, Message

from fedimdb.metrics.server import ServerMetrics
from fedimdb.protocol import NUM_EXAMPLES, arrays_of, metrics_of, partition_of, payload_bytes, state_view
from fedimdb.run_record import Privacy
from fedimdb.weights import ClientUpdate
from server.checks import Refusal
from server.records import RoundLog
from server.scrutiny import WeightLog

ClientArchiver = Callable[[int, int, ArrayRecord], None]
"""Called with (round, partition id, the client's returned arrays)."""


class Recorder:
    """Records a run's rounds as the loop reports them.

    Parameters
    ----------
    round_log : RoundLog
        Where the per-round and per-client rows go.
    metrics : ServerMetrics
        The run's Prometheus metrics: rounds, clients online and sampled, bytes, aggregation time.
    archive_client : ClientArchiver, optional
        Called with every aggregated train reply's arrays (e.g. to archive client weights).
    weight_log : WeightLog, optional
        Where each round's client updates are compared with the aggregated one (None: they are not).
    privacy : Privacy, optional
        run.json's differential-privacy block, kept up to date with the epsilon spent (None: ``dp = off``).
    """

    def __init__(
        self,
        round_log: RoundLog,
        metrics: ServerMetrics,
        archive_client: ClientArchiver | None = None,
        weight_log: WeightLog | None = None,
        privacy: Privacy | None = None,
    ) -> None:
        self.round_log = round_log
        self.metrics = metrics
        self.archive_client = archive_client
        self.weight_log = weight_log
        self.privacy = privacy
        self._updates: list[ClientUpdate] = []  # the round's accepted updates, until they are aggregated

    def round_started(self, server_round: int, messages: Sequence[Message], online: int) -> None:
        """The round's clock starts; its sampled and online clients are counted."""
        self.round_log.start_round(server_round, len(messages))
        self.metrics.round_started_now(server_round, len(messages), online)

    def sent(self, server_round: int, messages: Sequence[Message]) -> None:
        """Bytes sent, in the metrics and the round's row."""
        sent = payload_bytes(msg.content for msg in messages)
        self.metrics.sent(sent)
        self.round_log.traffic(server_round, sent=sent)

    def received(self, server_round: int, replies: Sequence[Message]) -> None:
        """Bytes received (error replies carry none), in the metrics and the round's row."""
        received = payload_bytes(msg.content for msg in replies if not msg.has_error())
        self.metrics.received(received)
        self.round_log.traffic(server_round, received=received)

    def refused(self, server_round: int, refusal: Refusal) -> None:
        """The client's row says it failed or was refused, and why."""
        self.round_log.record_failure(server_round, refusal.node, refusal.partition, refusal.status, refusal.reason)

    def retried(self, server_round: int) -> None:
        """The round's retries are counted."""
        self.round_log.retried(server_round)

    def accepted(self, server_round: int, ordered: Sequence[Message]) -> None:
        """Rows and metrics for the aggregated clients; their weights archived and kept for the weight log.

        The updates are read before aggregation: FedMedian and others empty the replies. A securely aggregated
        round's replies hold no weights (server/secure.py): nothing to archive or compare.
        """
        self.round_log.record_train(server_round, list(ordered))
        partitions = [partition_of(msg.content) for msg in ordered]
        if self.archive_client is not None:
            for partition, msg in zip(partitions, ordered, strict=True):
                self.archive_client(server_round, partition, arrays_of(msg.content))
        self.metrics.updates_used(server_round, partitions)
        if self.weight_log is not None:
            self._updates = [_client_update(msg) for msg in ordered if msg.content.array_records]

    def aggregated(self, server_round: int, sent: ArrayRecord, aggregate: ArrayRecord | None, seconds: float) -> None:
        """Aggregation time; each accepted update against the aggregate, in the weight log."""
        self.metrics.aggregated(seconds)
        updates, self._updates = self._updates, []
        if self.weight_log is not None and aggregate is not None and updates:
            self.weight_log.client_updates(server_round, state_view(sent), state_view(aggregate), updates)

    def released(self, server_round: int, epsilon: float, delta: float) -> None:
        """The epsilon spent so far: in the round's row, the metrics and run.json's privacy block."""
        self.round_log.released(server_round, epsilon)
        self.metrics.privacy_spent(epsilon)
        if self.privacy is not None:
            self.privacy.epsilon, self.privacy.delta, self.privacy.releases = epsilon, delta, server_round

    def budget_spent(self, server_round: int, reason: str) -> None:
        """run.json's privacy block says that the run stopped before ``server_round``, and why."""
        if self.privacy is not None:
            self.privacy.stopped = f"round {server_round} not run: {reason}"

    def evaluated(self, server_round: int, replies: Sequence[Message]) -> None:
        """The clients' evaluations join their rows of the round."""
        self.round_log.record_evaluate(server_round, list(replies))

    def round_failed(self, server_round: int) -> None:
        """The failed round's row, without a central evaluation."""
        self.round_log.finish_round(server_round, None, 0.0)


def _client_update(msg: Message) -> ClientUpdate:
    """A train reply's weights and example count, for the weight log."""
    examples = int(cast("int | float", metrics_of(msg.content)[NUM_EXAMPLES]))
    return ClientUpdate(partition_of(msg.content), examples, state_view(arrays_of(msg.content)))
