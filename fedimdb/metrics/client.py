"""What each ClientApp records for Prometheus, labelled by partition and run.

Each message's ClientApp process records its own training or evaluation; gauges keep the most
recent value (multiprocess mode ``mostrecent``), counters add up over processes.
"""

from __future__ import annotations

import os
import resource
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from fedimdb.training import EvalResult, TrainResult

LABELS = ("partition", "run")


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc), else its peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class ClientMetrics:
    """One ClientApp process's metrics, for ``partition_id`` in run ``run_id``."""

    def __init__(self, partition_id: int, run_id: int) -> None:
        self.labels = (str(partition_id), str(run_id))
        reg = CollectorRegistry(auto_describe=True)
        counter = partial(Counter, labelnames=LABELS, registry=reg)
        gauge = partial(Gauge, labelnames=LABELS, registry=reg, multiprocess_mode="mostrecent")
        self.samples = counter("fedimdb_client_samples_trained", "Reviews trained on")
        self.train_seconds = counter("fedimdb_client_train_seconds", "Seconds spent in local training")
        self.samples_per_second = gauge("fedimdb_client_samples_per_second", "Training speed in the last round")
        self.train_loss = gauge("fedimdb_client_train_loss", "Mean local training loss in the last round")
        self.eval_loss = gauge("fedimdb_client_eval_loss", "Validation loss of the latest global model")
        self.eval_accuracy = gauge("fedimdb_client_eval_accuracy", "Validation accuracy of the latest global model")
        self.update_norm = gauge("fedimdb_client_update_norm", "L2 norm of the last update (returned - received)")
        self.last_round = gauge("fedimdb_client_last_round", "Last round whose train message this client answered")
        self.rss = gauge(
            "fedimdb_client_process_resident_memory_bytes",
            "Resident memory of the latest ClientApp process, after its work",
        )

    def trained(self, server_round: int, result: TrainResult, update_norm: float) -> None:
        """A train message answered."""
        self.samples.labels(*self.labels).inc(result.num_examples)
        self.train_seconds.labels(*self.labels).inc(result.seconds)
        self.samples_per_second.labels(*self.labels).set(result.samples_per_second)
        self.train_loss.labels(*self.labels).set(result.loss)
        self.update_norm.labels(*self.labels).set(update_norm)
        self.last_round.labels(*self.labels).set(server_round)
        self.rss.labels(*self.labels).set(rss_bytes())

    def evaluated(self, result: EvalResult) -> None:
        """A global model evaluated on the validation split."""
        self.eval_loss.labels(*self.labels).set(result.loss)
        self.eval_accuracy.labels(*self.labels).set(result.accuracy)
        self.rss.labels(*self.labels).set(rss_bytes())
