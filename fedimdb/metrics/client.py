"""What each ClientApp records for Prometheus, labelled by partition and run.

Each message's ClientApp process records its own training or evaluation; gauges keep the most
recent value (multiprocess mode ``mostrecent``), counters add up over processes.
"""

from __future__ import annotations

import os
import resource
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
        total = {"labelnames": LABELS, "registry": reg}
        latest = {**total, "multiprocess_mode": "mostrecent"}
        self.samples = Counter("fedimdb_client_samples_trained", "Reviews trained on", **total)
        self.train_seconds = Counter("fedimdb_client_train_seconds", "Seconds spent in local training", **total)
        self.samples_per_second = Gauge("fedimdb_client_samples_per_second", "Training speed in the last round",
                                        **latest)  # fmt: skip
        self.train_loss = Gauge("fedimdb_client_train_loss", "Mean local training loss in the last round", **latest)
        self.eval_loss = Gauge("fedimdb_client_eval_loss", "Validation loss of the latest global model", **latest)
        self.eval_accuracy = Gauge("fedimdb_client_eval_accuracy", "Validation accuracy of the latest global model",
                                   **latest)  # fmt: skip
        self.update_norm = Gauge("fedimdb_client_update_norm", "L2 norm of the last update (returned - received)",
                                 **latest)  # fmt: skip
        self.last_round = Gauge("fedimdb_client_last_round", "Last round whose train message this client answered",
                                **latest)  # fmt: skip
        self.rss = Gauge("fedimdb_client_process_resident_memory_bytes", "Resident memory of the latest ClientApp "
                         "process, after its work", **latest)  # fmt: skip

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
