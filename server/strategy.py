"""Strategy selection and per-round bookkeeping around Flower's own strategies.

:func:`make_strategy` returns Flower's strategy class extended by :class:`RecordingMixin`,
which (1) records every reply as a per-client row, (2) orders replies by partition id
before Flower aggregates them, so the floating-point sums (and the run) are the same
for the same seed whatever order the replies arrived in, and (3) times each round.
"""

from __future__ import annotations

import math
import time
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

ROUND_COLUMNS = (
    "round",
    "central_loss",
    "central_accuracy",
    "central_examples",
    "train_loss",
    "train_examples",
    "local_eval_loss",
    "local_eval_accuracy",
    "local_eval_examples",
    "clients_sampled",
    "clients_participating",
    "clients_failed",
    "round_seconds",
)
CLIENT_COLUMNS = (
    "round",
    "partition_id",
    "node_id",
    "status",
    "num_examples",
    "train_loss",
    "train_steps",
    "train_seconds",
    "train_samples_per_s",
    "local_eval_loss",
    "local_eval_accuracy",
    "local_eval_examples",
)

WeightsSink = Callable[[int, int, ArrayRecord], None]


def _weighted_mean(rows: list[dict[str, Any]], key: str, weight: str) -> float | str:
    pairs = [(r[key], r[weight]) for r in rows if r.get(key) not in (None, "") and r.get(weight)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else ""


class RoundLog:
    """The rows of rounds.csv and clients.csv, filled in as the strategy runs."""

    def __init__(self, on_client_weights: WeightsSink | None = None) -> None:
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        self._started: dict[int, float] = {}
        self._sampled: dict[int, int] = {}
        self._failed: dict[int, int] = {}
        self._on_client_weights = on_client_weights

    def start_round(self, server_round: int, sampled: int) -> None:
        self._started[server_round] = time.monotonic()
        self._sampled[server_round] = sampled

    def _row(self, server_round: int, partition_id: int, node_id: int) -> dict[str, Any]:
        for row in self.clients:
            if row["round"] == server_round and row["partition_id"] == partition_id:
                return row
        row = {c: "" for c in CLIENT_COLUMNS}
        row.update(round=server_round, partition_id=partition_id, node_id=node_id, status="ok")
        self.clients.append(row)
        return row

    def record_train(self, server_round: int, replies: list[Message]) -> None:
        """One row per training reply; errors count as failed clients."""
        for msg in replies:
            if msg.has_error():
                self._failed[server_round] = self._failed.get(server_round, 0) + 1
                continue
            m = msg.content["metrics"]
            row = self._row(server_round, int(m["partition-id"]), msg.metadata.src_node_id)
            row.update(
                num_examples=int(m["num-examples"]),
                train_loss=float(m["train-loss"]),
                train_steps=int(m["train-steps"]),
                train_seconds=float(m["train-seconds"]),
                train_samples_per_s=float(m["train-samples-per-s"]),
            )
            if self._on_client_weights is not None:
                self._on_client_weights(server_round, int(m["partition-id"]), msg.content["arrays"])

    def record_evaluate(self, server_round: int, replies: list[Message]) -> None:
        """Local validation results join the client's row of that round."""
        for msg in replies:
            if msg.has_error():
                continue
            m = msg.content["metrics"]
            row = self._row(server_round, int(m["partition-id"]), msg.metadata.src_node_id)
            row.update(
                local_eval_loss=float(m["eval-loss"]),
                local_eval_accuracy=float(m["eval-accuracy"]),
                local_eval_examples=int(m["num-examples"]),
            )

    def finish_round(self, server_round: int, loss: float, accuracy: float, examples: int) -> dict[str, Any]:
        """Close the round with the central evaluation; return its rounds.csv row."""
        rows = [r for r in self.clients if r["round"] == server_round]
        trained = [r for r in rows if r["num_examples"] != ""]
        row = {
            "round": server_round,
            "central_loss": loss,
            "central_accuracy": accuracy,
            "central_examples": examples,
            "train_loss": _weighted_mean(trained, "train_loss", "num_examples"),
            "train_examples": sum(r["num_examples"] for r in trained),
            "local_eval_loss": _weighted_mean(rows, "local_eval_loss", "local_eval_examples"),
            "local_eval_accuracy": _weighted_mean(rows, "local_eval_accuracy", "local_eval_examples"),
            "local_eval_examples": sum(r["local_eval_examples"] or 0 for r in rows),
            "clients_sampled": self._sampled.get(server_round, 0),
            "clients_participating": len(trained),
            "clients_failed": self._failed.get(server_round, 0),
            "round_seconds": time.monotonic() - self._started.get(server_round, time.monotonic()),
        }
        self.rounds.append(row)
        return row


def _by_partition(replies: Iterable[Message]) -> list[Message]:
    """Replies in partition order (errors last): aggregation no longer depends on arrival order."""

    def key(msg: Message) -> tuple[int, int]:
        if msg.has_error():
            return (1, msg.metadata.src_node_id)
        return (0, int(msg.content["metrics"]["partition-id"]))

    return sorted(replies, key=key)


class RecordingMixin:
    """Put in front of a Flower strategy class: records and orders replies, times rounds."""

    round_log: RoundLog

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self.round_log.start_round(server_round, len(messages))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        ordered = _by_partition(replies)
        self.round_log.record_train(server_round, ordered)
        return super().aggregate_train(server_round, ordered)  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        ordered = _by_partition(replies)
        self.round_log.record_evaluate(server_round, ordered)
        return super().aggregate_evaluate(server_round, ordered)  # type: ignore[misc]


def make_strategy(cfg: RunConfig, round_log: RoundLog) -> Strategy:
    """Flower's strategy named by ``cfg.strategy``, waiting for all ``num-clients`` nodes."""
    base = STRATEGY_CLASSES[cfg.strategy]
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
    recording = type(f"Recording{base.__name__}", (RecordingMixin, base), {})
    strategy = recording(**kwargs)
    strategy.round_log = round_log
    return strategy
