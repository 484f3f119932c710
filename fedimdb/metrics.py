"""Prometheus metrics of an experiment: served over HTTP while it runs, and kept as a text file.

A registry of its own per experiment, so nothing else in the process leaks into it.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, write_to_textfile

METRICS_FILE = "metrics.prom"


class ExperimentMetrics:
    """Repeats done/failed, repeat duration, final accuracy/loss per repeat, current round."""

    def __init__(self, experiment_id: str, exp_dir: Path) -> None:
        self.registry = CollectorRegistry()
        self.path = exp_dir / METRICS_FILE
        labels = {"labelnames": ("experiment",), "registry": self.registry}
        self.experiment_id = experiment_id
        self.repeats_total = Gauge("fedimdb_repeats_total", "Repeats planned in the experiment", **labels)
        self.repeats_done = Counter("fedimdb_repeats_completed", "Repeats completed and verified", **labels)
        self.repeats_failed = Counter("fedimdb_repeats_failed", "Repeat attempts that failed", **labels)
        self.current_repeat = Gauge("fedimdb_current_repeat", "Repeat in progress (-1: none)", **labels)
        self.current_round = Gauge("fedimdb_current_round", "Last round completed in the repeat in progress", **labels)
        per_repeat = {"labelnames": ("experiment", "repeat"), "registry": self.registry}
        self.repeat_seconds = Gauge("fedimdb_repeat_duration_seconds", "Wall time of a completed repeat", **per_repeat)
        self.final_accuracy = Gauge("fedimdb_final_accuracy", "Central accuracy after the last round", **per_repeat)
        self.final_loss = Gauge("fedimdb_final_loss", "Central loss after the last round", **per_repeat)

    def serve(self, port: int) -> None:
        """Expose /metrics on ``port`` (0: do not serve)."""
        if port:
            start_http_server(port, registry=self.registry)

    def start(self, total: int, done: int) -> None:
        self.repeats_total.labels(self.experiment_id).set(total)
        self.repeats_done.labels(self.experiment_id).inc(done)
        self.repeats_failed.labels(self.experiment_id).inc(0)
        self.current_repeat.labels(self.experiment_id).set(-1)
        self.current_round.labels(self.experiment_id).set(0)
        self.flush()

    def repeat_started(self, repeat: int) -> None:
        self.current_repeat.labels(self.experiment_id).set(repeat)
        self.current_round.labels(self.experiment_id).set(0)
        self.flush()

    def round_done(self, server_round: int) -> None:
        self.current_round.labels(self.experiment_id).set(server_round)
        self.flush()

    def repeat_finished(self, repeat: int, seconds: float, accuracy: float | None, loss: float | None) -> None:
        self.repeats_done.labels(self.experiment_id).inc()
        self.repeat_seconds.labels(self.experiment_id, str(repeat)).set(seconds)
        if accuracy is not None and loss is not None:
            self.final_accuracy.labels(self.experiment_id, str(repeat)).set(accuracy)
            self.final_loss.labels(self.experiment_id, str(repeat)).set(loss)
        self.current_repeat.labels(self.experiment_id).set(-1)
        self.flush()

    def repeat_failed(self) -> None:
        self.repeats_failed.labels(self.experiment_id).inc()
        self.flush()

    def flush(self) -> None:
        """Rewrite the text file (node-exporter textfile format)."""
        write_to_textfile(str(self.path), self.registry)
