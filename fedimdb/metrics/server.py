"""What the ServerApp records for Prometheus, per run: progress, timing, clients, traffic, accuracy, privacy.

Every series carries the Flower run id as ``run`` (the dashboard's run selector). Gauges keep the
most recent value any process set (multiprocess mode ``mostrecent``), so a finished run's last
values stay visible while the container lives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fedimdb.config import DP_OFF, RunConfig
from fedimdb.run_record import RunStatus

RUN_LABEL = "run"
ROUND_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600, float("inf"))
AGGREGATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, float("inf"))


class ServerMetrics:
    """The ServerApp's metrics of one run.

    Parameters
    ----------
    run_id : int
        Flower's id of the run (the ``run`` label).
    cfg : RunConfig
        The run's settings: strategy, model, rounds, clients and round timeout are recorded.
    """

    def __init__(self, run_id: int, cfg: RunConfig) -> None:
        self.run = str(run_id)
        reg = CollectorRegistry(auto_describe=True)
        gauge = partial(Gauge, labelnames=(RUN_LABEL,), registry=reg, multiprocess_mode="mostrecent")
        counter = partial(Counter, labelnames=(RUN_LABEL,), registry=reg)
        histogram = partial(Histogram, labelnames=(RUN_LABEL,), registry=reg)
        self.info = gauge(
            "fedimdb_server_run_info",
            "The run's settings (value 1)",
            labelnames=(RUN_LABEL, "strategy", "model", "clients", "rounds"),
        )
        self.status = gauge(
            "fedimdb_server_run_status", "1 for the run's status, 0 for the others", labelnames=(RUN_LABEL, "status")
        )
        self.round = gauge("fedimdb_server_round", "Round in progress (0: before round 1)")
        self.round_started = gauge(
            "fedimdb_server_round_started_timestamp_seconds", "Unix time the round in progress began"
        )
        self.round_timeout = gauge("fedimdb_server_round_timeout_seconds", "Seconds a round may wait for replies")
        self.rounds_completed = counter("fedimdb_server_rounds_completed", "Rounds completed")
        self.round_seconds = histogram(
            "fedimdb_server_round_duration_seconds", "Wall time of a completed round", buckets=ROUND_BUCKETS
        )
        self.aggregation_seconds = histogram(
            "fedimdb_server_aggregation_seconds",
            "Time the strategy took to aggregate a round's updates",
            buckets=AGGREGATION_BUCKETS,
        )
        self.nodes_online = gauge("fedimdb_server_nodes_online", "SuperNodes online before the round")
        self.sampled = gauge("fedimdb_server_clients_sampled", "Clients sampled in the last round")
        self.replied = gauge("fedimdb_server_clients_replied", "Clients whose update the last round aggregated")
        self.failed = gauge("fedimdb_server_clients_failed", "Clients that failed or were refused in the last round")
        self.client_last_round = gauge(
            "fedimdb_server_client_last_round",
            "Last round that aggregated an update of this client",
            labelnames=(RUN_LABEL, "partition"),
        )
        self.bytes_sent = counter("fedimdb_server_sent_bytes", "Bytes of weights sent to clients")
        self.bytes_received = counter("fedimdb_server_received_bytes", "Bytes of weights received from clients")
        self.central_loss = gauge("fedimdb_server_central_loss", "Held-out loss of the latest global model")
        self.central_accuracy = gauge("fedimdb_server_central_accuracy", "Held-out accuracy of the latest global model")
        self.epsilon = gauge(
            "fedimdb_server_privacy_epsilon",
            "Differential privacy: the epsilon the run has spent, at its dp-delta (+Inf: dp off, no guarantee)",
        )
        self.info.labels(self.run, cfg.strategy, cfg.model, str(cfg.num_clients), str(cfg.num_rounds)).set(1)
        self.round_timeout.labels(self.run).set(cfg.round_timeout)
        self.round.labels(self.run).set(0)
        self.epsilon.labels(self.run).set(0.0 if cfg.dp != DP_OFF else math.inf)
        self.rounds_completed.labels(self.run)
        self.bytes_sent.labels(self.run)
        self.bytes_received.labels(self.run)
        self.finished(RunStatus.RUNNING)

    def round_started_now(self, server_round: int, sampled: int, online: int) -> None:
        """A round's train messages go out to ``sampled`` of the ``online`` clients."""
        self.round.labels(self.run).set(server_round)
        self.round_started.labels(self.run).set(time.time())
        self.sampled.labels(self.run).set(sampled)
        self.nodes_online.labels(self.run).set(online)

    def sent(self, payload: int) -> None:
        """Messages carrying ``payload`` bytes of arrays went out (:func:`~fedimdb.protocol.payload_bytes`)."""
        self.bytes_sent.labels(self.run).inc(payload)

    def received(self, payload: int) -> None:
        """Replies carrying ``payload`` bytes of arrays came in."""
        self.bytes_received.labels(self.run).inc(payload)

    def updates_used(self, server_round: int, partition_ids: Iterable[int]) -> None:
        """The round aggregates the updates of these clients (the others are silent, failed or refused)."""
        for partition in partition_ids:
            self.client_last_round.labels(self.run, str(partition)).set(server_round)

    def aggregated(self, seconds: float) -> None:
        """The strategy aggregated a round's updates in ``seconds``."""
        self.aggregation_seconds.labels(self.run).observe(seconds)

    def evaluated(self, loss: float, accuracy: float) -> None:
        """The central evaluation of the latest global model (round 0: the initial one)."""
        self.central_loss.labels(self.run).set(loss)
        self.central_accuracy.labels(self.run).set(accuracy)

    def privacy_spent(self, epsilon: float) -> None:
        """Differential privacy: the run has spent ``epsilon`` so far."""
        self.epsilon.labels(self.run).set(epsilon)

    def round_finished(self, row: Mapping[str, Any]) -> None:
        """A round closed; ``row`` is its rounds.csv row (server/records.py)."""
        self.rounds_completed.labels(self.run).inc()
        self.round_seconds.labels(self.run).observe(float(row["round_seconds"]))
        self.replied.labels(self.run).set(int(row["clients_participating"]))
        self.failed.labels(self.run).set(int(row["clients_failed"]) + int(row["clients_refused"]))

    def finished(self, status: RunStatus) -> None:
        """The run's status: running, completed or failed."""
        for name in RunStatus:
            self.status.labels(self.run, name).set(int(name == status))
