"""Strategy selection, and a recording wrapper around Flower's own strategies.

:func:`make_strategy` builds the Flower strategy named in the run config and wraps it in
:class:`RecordingStrategy`, which (1) records every reply in a :class:`~server.records.RoundLog`,
(2) orders replies by partition id before the wrapped strategy aggregates them, so the
floating-point sums (and the run) are the same for the same seed whatever order the replies
arrived in, (3) times each round, and (4) hands each client's returned weights to an optional
archiver. Aggregation itself stays Flower's.
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

from fedimdb.config import RunConfig
from fedimdb.protocol import ARRAYS, METRICS, PARTITION_ID
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
    """

    def __init__(self, inner: Strategy, round_log: RoundLog, archive_client: ClientArchiver | None = None) -> None:
        self.inner = inner
        self.round_log = round_log
        self.archive_client = archive_client

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages; the round's clock starts here."""
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.round_log.start_round(server_round, len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record the replies (and archive client weights), then aggregate them in partition order."""
        ordered = partition_order(replies)
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
        """The wrapped strategy's evaluate messages."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Record the local evaluations, then aggregate them in partition order."""
        ordered = partition_order(replies)
        self.round_log.record_evaluate(server_round, ordered)
        return self.inner.aggregate_evaluate(server_round, ordered)

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
    return RecordingStrategy(inner, round_log, archive_client)
