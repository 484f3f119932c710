"""Strategy selection, and a recording wrapper around Flower's own strategies.

:func:`make_strategy` builds the Flower strategy named in the run config and wraps it in
:class:`RecordingStrategy`, which (1) records every reply in a :class:`~server.records.RoundLog`,
(2) orders replies by partition id before the wrapped strategy aggregates them, so the
floating-point sums (and the run) are the same for the same seed whatever order the replies
arrived in, (3) times each round, (4) hands each client's returned weights to an optional
archiver, and (5) with ``local-eval = with-train``, has clients evaluate the global model they
receive inside the next round's train message instead of in evaluate messages of their own, with
one evaluate exchange after the last round (:meth:`RecordingStrategy.evaluate_last`): the same
evaluations with one exchange a round fewer. Aggregation itself stays Flower's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from fedimdb.config import FULL_PRECISION, LOCAL_EVAL_WITH_TRAIN, RunConfig
from fedimdb.protocol import ARRAYS, EVALUATE_RECEIVED, METRICS, PARTITION_ID, received_state, transport_arrays
from server.records import RoundLog, partition_order

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
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


class RecordingStrategy(Strategy):
    """A Flower strategy that records, orders and times the replies of the strategy it wraps.

    Parameters
    ----------
    inner : Strategy
        The Flower strategy that samples clients and aggregates their replies.
    round_log : RoundLog
        Where the per-round and per-client rows go.
    archive_client : ClientArchiver, optional
        Called with every successful train reply's arrays (e.g. to archive client weights).
    evaluate_received : bool, default False
        Ask clients to evaluate the global model they receive in train messages (from round 2 on,
        as the model of round 1 arrives then), and send no evaluate messages during the rounds.
    transport : str, default "float32"
        dtype of the weights in messages, both ways; replies are turned back into float32 before
        anything else sees them.
    """

    def __init__(
        self,
        inner: Strategy,
        round_log: RoundLog,
        archive_client: ClientArchiver | None = None,
        evaluate_received: bool = False,
        transport: str = FULL_PRECISION,
    ) -> None:
        self.inner = inner
        self.round_log = round_log
        self.archive_client = archive_client
        self.evaluate_received = evaluate_received
        self.transport = transport

    def _outgoing(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global model as the messages carry it."""
        if self.transport == FULL_PRECISION:
            return arrays
        return transport_arrays(arrays.to_torch_state_dict(), self.transport)

    def _incoming(self, replies: list[Message]) -> None:
        """Replies' arrays back in float32, in place."""
        if self.transport == FULL_PRECISION:
            return
        for msg in replies:
            if not msg.has_error():
                msg.content[ARRAYS] = ArrayRecord(received_state(msg.content[ARRAYS]))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages; the round's clock starts here."""
        if self.evaluate_received and server_round > 1:
            config = ConfigRecord({**config, EVALUATE_RECEIVED: True})
        messages = list(self.inner.configure_train(server_round, self._outgoing(arrays), config, grid))
        self.round_log.start_round(server_round, len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record the replies (and archive client weights), then aggregate them in partition order."""
        ordered = partition_order(replies)
        self._incoming(ordered)
        self.round_log.record_train(server_round, ordered)
        if self.archive_client is not None:
            for msg in ordered:
                if not msg.has_error():
                    partition_id = int(msg.content[METRICS][PARTITION_ID])
                    self.archive_client(server_round, partition_id, msg.content[ARRAYS])
        return self.inner.aggregate_train(server_round, ordered)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluate messages; none when the train messages carry the evaluation."""
        if self.evaluate_received:
            return []
        return self.inner.configure_evaluate(server_round, self._outgoing(arrays), config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Record the local evaluations, then aggregate them in partition order."""
        ordered = partition_order(replies)
        if not ordered:
            return None
        self.round_log.record_evaluate(server_round, ordered)
        return self.inner.aggregate_evaluate(server_round, ordered)

    def evaluate_last(self, grid: Grid, arrays: ArrayRecord, server_round: int, timeout: float) -> None:
        """With ``evaluate_received``: the evaluate exchange of the last round's global model."""
        if not self.evaluate_received:
            return
        messages = self.inner.configure_evaluate(server_round, self._outgoing(arrays), ConfigRecord(), grid)
        self.aggregate_evaluate(server_round, grid.send_and_receive(messages, timeout=timeout))

    def summary(self) -> None:
        """The wrapped strategy's summary."""
        self.inner.summary()


def strategy_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Keyword arguments of the Flower strategy named by ``cfg.strategy``: all clients must be online."""
    kwargs: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": max(1, math.ceil(cfg.fraction_train * cfg.num_clients)),
        "min_evaluate_nodes": max(1, math.ceil(cfg.fraction_evaluate * cfg.num_clients)),
        "min_available_nodes": cfg.num_clients,
    }
    if cfg.strategy == "fedprox":
        kwargs["proximal_mu"] = cfg.proximal_mu
    elif cfg.strategy in ("fedadam", "fedyogi", "fedadagrad"):
        kwargs["eta"] = cfg.server_learning_rate
    elif cfg.strategy == "fedtrimmedavg":
        kwargs["beta"] = cfg.trimmed_beta
    elif cfg.strategy == "krum":
        kwargs["num_malicious_nodes"] = cfg.krum_malicious_nodes
    return kwargs


def make_strategy(
    cfg: RunConfig, round_log: RoundLog, archive_client: ClientArchiver | None = None
) -> RecordingStrategy:
    """Flower's strategy named by ``cfg.strategy``, wrapped so that every round is recorded."""
    inner = STRATEGY_CLASSES[cfg.strategy](**strategy_kwargs(cfg))
    evaluate_received = cfg.local_eval == LOCAL_EVAL_WITH_TRAIN and cfg.fraction_evaluate > 0
    return RecordingStrategy(inner, round_log, archive_client, evaluate_received, cfg.weight_transport)
