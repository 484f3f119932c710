"""The rows of ``rounds.csv`` and ``clients.csv``: their schema, and filling them in as rounds go.

:class:`RoundLog` is bookkeeping only: it reads the replies' metrics (see fedimdb/protocol.py)
and the central evaluation, and keeps rows; writing them is the ServerApp's job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from flwr.app import Message

from fedimdb.protocol import (
    EvalMetrics,
    ReceivedEvalMetrics,
    TrainMetrics,
    metrics_of,
    partition_of,
)
from fedimdb.training import EvalResult

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
    "clients_refused",
    "retries",
    "bytes_sent",
    "bytes_received",
    "epsilon",
    "central_eval_seconds",
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
    "setup_seconds",
    "train_seconds",
    "train_samples_per_s",
    "local_eval_loss",
    "local_eval_accuracy",
    "local_eval_examples",
    "reason",
)


class ClientStatus(StrEnum):
    """A client's status in a round, in clients.csv."""

    OK = "ok"  # its update was aggregated
    FAILED = "failed"  # it sent an error reply, or none
    REFUSED = "refused"  # its update was screened out


def weighted_mean(rows: list[dict[str, Any]], key: str, weight: str) -> float | str:
    """Mean of ``key`` weighted by ``weight`` over the rows that have both; "" when none do."""
    pairs = [(r[key], r[weight]) for r in rows if r.get(key) not in (None, "") and r.get(weight)]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else ""


def partition_order(replies: Iterable[Message]) -> list[Message]:
    """Replies in partition order (errors last), so aggregation does not depend on arrival order."""

    def key(msg: Message) -> tuple[int, int]:
        if msg.has_error():
            return (1, msg.metadata.src_node_id)
        return (0, partition_of(msg.content))

    return sorted(replies, key=key)


class RoundLog:
    """The rows of rounds.csv and clients.csv, filled in as the strategy runs.

    Parameters
    ----------
    rounds, clients : list of dict, optional
        Rows of earlier rounds to go on from (a continued run: server/continuation.py).
    """

    def __init__(self, rounds: Iterable[dict[str, Any]] = (), clients: Iterable[dict[str, Any]] = ()) -> None:
        self.rounds: list[dict[str, Any]] = list(rounds)
        self.clients: list[dict[str, Any]] = list(clients)
        self._started: dict[int, float] = {}
        self._sampled: dict[int, int] = {}
        self._retries: dict[int, int] = {}
        self._bytes: dict[int, list[int]] = {}  # the round's payload bytes: [sent, received]
        self._epsilon: dict[int, float] = {}  # differential privacy: the epsilon spent once the round was released
        self._last_finished = 0.0  # time.monotonic() when the latest round's central evaluation ended

    def start_round(self, server_round: int, sampled: int) -> None:
        """A round's train messages went out to ``sampled`` clients."""
        self._started[server_round] = time.monotonic()
        self._sampled[server_round] = sampled

    def retried(self, server_round: int) -> None:
        """The round's failed clients were sent their train messages again."""
        self._retries[server_round] = self._retries.get(server_round, 0) + 1

    def traffic(self, server_round: int, sent: int = 0, received: int = 0) -> None:
        """The round's messages carried ``sent`` payload bytes out, its replies ``received`` bytes in."""
        counts = self._bytes.setdefault(server_round, [0, 0])
        counts[0] += sent
        counts[1] += received

    def released(self, server_round: int, epsilon: float) -> None:
        """The round's aggregate was released with differential privacy; the run has spent ``epsilon`` so far."""
        self._epsilon[server_round] = epsilon

    def _row(self, server_round: int, partition_id: int | None, node_id: int) -> dict[str, Any]:
        """The client's row of the round (by partition, or by node while its partition is unknown)."""
        for row in self.clients:
            if row["round"] == server_round and (
                row["partition_id"] == partition_id or (row["partition_id"] == "" and row["node_id"] == node_id)
            ):
                row.update(partition_id="" if partition_id is None else partition_id, node_id=node_id)
                return row
        row = dict.fromkeys(CLIENT_COLUMNS, "")
        row.update(
            round=server_round,
            partition_id="" if partition_id is None else partition_id,
            node_id=node_id,
            status=ClientStatus.OK,
        )
        self.clients.append(row)
        return row

    def record_failure(
        self, server_round: int, node_id: int, partition_id: int | None, status: str, reason: str
    ) -> None:
        """A train reply that is not aggregated: an error reply (``FAILED``) or a refused update (``REFUSED``).

        ``node_id`` is the node the train message went to; ``partition_id`` is None while no reply of
        that node has named it (the round loop keeps that map: server/loop.py).
        """
        self._row(server_round, partition_id, node_id).update(status=status, reason=reason)

    def record_train(self, server_round: int, replies: list[Message]) -> None:
        """One row per aggregated training reply (failures: :meth:`record_failure`).

        A reply that evaluated the global model it received (``local-eval = with-train``) fills in
        the local evaluation of the previous round, whose global model that was.
        """
        for msg in replies:
            record = metrics_of(msg.content)
            m = TrainMetrics.from_record(record)
            row = self._row(server_round, m.partition_id, msg.metadata.src_node_id)
            row.update(
                status=ClientStatus.OK,
                reason="",
                num_examples=m.num_examples,
                train_loss=m.loss,
                train_steps=m.steps,
                setup_seconds=m.setup_seconds,
                train_seconds=m.seconds,
                train_samples_per_s=m.samples_per_second,
            )
            if ReceivedEvalMetrics.in_record(record) and server_round > 1:
                self._local_eval(server_round - 1, m.partition_id, msg, ReceivedEvalMetrics.from_record(record))
        self._refresh_local_eval(server_round - 1)

    def record_evaluate(self, server_round: int, replies: list[Message]) -> None:
        """Local validation results join the client's row of that round."""
        for msg in replies:
            if msg.has_error():
                continue
            m = EvalMetrics.from_record(metrics_of(msg.content))
            self._local_eval(server_round, m.partition_id, msg, m)
        self._refresh_local_eval(server_round)

    def _local_eval(
        self, server_round: int, partition_id: int, msg: Message, m: EvalMetrics | ReceivedEvalMetrics
    ) -> None:
        """A client's evaluation of round ``server_round``'s global model joins its row of that round."""
        row = self._row(server_round, partition_id, msg.metadata.src_node_id)
        row.update(local_eval_loss=m.loss, local_eval_accuracy=m.accuracy, local_eval_examples=m.num_examples)

    def _local_eval_summary(self, server_round: int) -> dict[str, Any]:
        """The round's local-evaluation columns of rounds.csv, over its clients' rows."""
        rows = [r for r in self.clients if r["round"] == server_round]
        return {
            "local_eval_loss": weighted_mean(rows, "local_eval_loss", "local_eval_examples"),
            "local_eval_accuracy": weighted_mean(rows, "local_eval_accuracy", "local_eval_examples"),
            "local_eval_examples": sum(r["local_eval_examples"] or 0 for r in rows),
        }

    def _refresh_local_eval(self, server_round: int) -> None:
        """Local evaluations that arrive after the round closed update its rounds.csv row."""
        for row in self.rounds:
            if row["round"] == server_round:
                row.update(self._local_eval_summary(server_round))

    def finish_round(
        self, server_round: int, central: EvalResult | None, eval_seconds: float, ended: float | None = None
    ) -> dict[str, Any]:
        """Close the round with the central evaluation (None: the round failed); return its rounds.csv row.

        Its ``round_seconds`` run from the round's start, or from the end of the previous round's central
        evaluation if that came later (``overlap-central-eval``), to ``ended`` (``time.monotonic()``, default
        now), when its own evaluation ended: summed over rounds 1 to k, the time until round k's accuracy was known.
        """
        ended = time.monotonic() if ended is None else ended
        began = max(self._started.get(server_round, ended), self._last_finished)
        self._last_finished = ended
        rows = [r for r in self.clients if r["round"] == server_round]
        trained = [r for r in rows if r["status"] == ClientStatus.OK and r["num_examples"] != ""]
        row = {
            **dict.fromkeys(ROUND_COLUMNS, ""),
            "round": server_round,
            "train_loss": weighted_mean(trained, "train_loss", "num_examples"),
            "train_examples": sum(r["num_examples"] for r in trained),
            **self._local_eval_summary(server_round),
            "clients_sampled": self._sampled.get(server_round, 0),
            "clients_participating": len(trained),
            "clients_failed": sum(r["status"] == ClientStatus.FAILED for r in rows),
            "clients_refused": sum(r["status"] == ClientStatus.REFUSED for r in rows),
            "retries": self._retries.get(server_round, 0),
            "bytes_sent": self._bytes.get(server_round, [0, 0])[0],
            "bytes_received": self._bytes.get(server_round, [0, 0])[1],
            "epsilon": self._epsilon.get(server_round, ""),
            "round_seconds": ended - began,
        }
        if central is not None:
            row.update(
                central_loss=central.loss,
                central_accuracy=central.accuracy,
                central_examples=central.num_examples,
                central_eval_seconds=eval_seconds,
            )
        self.rounds.append(row)
        return row
