"""Prometheus metrics of an experiment: served over HTTP while it runs, and kept as a text file.

A registry of its own per experiment, so nothing else in the process leaks into it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app, write_to_textfile
from prometheus_client.exposition import ThreadingWSGIServer

from fedimdb.metrics.exporter import add_collector
from fedimdb.waiting import wait_until

METRICS_FILE = "metrics.prom"
PROMETHEUS_AGENT = "Prometheus/"  # how Prometheus's scrapes name themselves (User-Agent)
LAST_SCRAPE_WAIT = 10.0  # at most, seconds /metrics stays up after the experiment: two scrapes of monitoring/prometheus


@dataclass
class Progress:
    """Rounds left in the experiment, and the pace of the rounds seen so far: the ETA.

    ``left`` counts every round of every repeat still to run; a failed attempt puts its rounds back.
    """

    left: int = 0
    seconds: float = 0.0  # spent in the rounds counted in ``done``
    done: int = 0
    _repeat_start: float = 0.0
    _in_repeat: int = 0  # rounds of the attempt in progress, counted in ``done``

    def repeat_started(self, now: float) -> None:
        self._repeat_start, self._in_repeat = now, 0

    def round_done(self, server_round: int, now: float) -> float | None:
        """Seconds still to go after ``server_round`` of the attempt in progress (None: no pace yet)."""
        new = server_round - self._in_repeat
        if new <= 0:
            return None
        self.left -= new
        self.done += new
        self.seconds += now - self._repeat_start
        self._repeat_start, self._in_repeat = now, server_round
        return max(self.left, 0) * self.seconds / self.done

    def repeat_finished(self) -> None:
        self._in_repeat = 0

    def repeat_failed(self) -> None:
        self.left += self._in_repeat
        self._in_repeat = 0


class ScrapeWatch:
    """/metrics of a registry as a WSGI app, noting when the last scrape by Prometheus (its User-Agent) that
    was wholly sent had begun (monotonic seconds; None: none yet). Other readers (a test's, curl) do not count."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.app = make_wsgi_app(registry)
        self.last: float | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        began = time.monotonic()
        body = self.app(environ, start_response)
        if not environ.get("HTTP_USER_AGENT", "").startswith(PROMETHEUS_AGENT):
            return body
        return _OnClose(body, lambda: setattr(self, "last", began))


class _OnClose(list[bytes]):
    """A WSGI body whose ``close()``, which the server calls once it has written the body, calls ``done``."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        super().__init__(body)
        self.done = done

    def close(self) -> None:
        self.done()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line on stderr per request."""


class ExperimentMetrics:
    """Repeats done/failed, repeat duration, final accuracy/loss per repeat, current round, ETA."""

    def __init__(self, experiment_id: str, exp_dir: Path, rounds: int = 1) -> None:
        self.registry = CollectorRegistry()
        self.path = exp_dir / METRICS_FILE
        gauge = partial(Gauge, labelnames=("experiment",), registry=self.registry)
        counter = partial(Counter, labelnames=("experiment",), registry=self.registry)
        self.experiment_id = experiment_id
        self.rounds = rounds
        self.served: ScrapeWatch | None = None
        self._server: WSGIServer | None = None
        self._clock = Progress()
        self.repeats_planned = gauge("fedimdb_repeats_planned", "Repeats planned in the experiment")
        self.repeats_done = counter("fedimdb_repeats_completed", "Repeats completed and verified")
        self.repeats_failed = counter("fedimdb_repeats_failed", "Repeat attempts that failed")
        self.current_repeat = gauge("fedimdb_current_repeat", "Repeat in progress (-1: none)")
        self.current_round = gauge("fedimdb_current_round", "Last round completed in the repeat in progress")
        self.eta = gauge("fedimdb_eta_seconds", "Estimated seconds until the experiment ends")
        per_repeat = partial(Gauge, labelnames=("experiment", "repeat"), registry=self.registry)
        self.repeat_seconds = per_repeat("fedimdb_repeat_duration_seconds", "Wall time of a completed repeat")
        self.final_accuracy = per_repeat("fedimdb_final_accuracy", "Central accuracy after the last round")
        self.final_loss = per_repeat("fedimdb_final_loss", "Central loss after the last round")

    def serve(self, port: int) -> None:
        """Expose /metrics on ``port`` (0: do not serve)."""
        if port:
            self.served = ScrapeWatch(self.registry)
            self._server = make_server("0.0.0.0", port, self.served, ThreadingWSGIServer, handler_class=_Quiet)
            threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop_serving(self) -> None:
        """Stop serving /metrics and free the port (a sweep's next cell serves on it)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for_last_scrape(self) -> None:
        """If Prometheus has scraped /metrics, stay up until a scrape begun now has been sent, so that it
        sees the final values; at most :data:`LAST_SCRAPE_WAIT` s (nothing scrapes what nobody scraped so far)."""
        if self.served is None or self.served.last is None:
            return
        served, finished = self.served, time.monotonic()
        wait_until(lambda: served.last is not None and served.last >= finished, LAST_SCRAPE_WAIT, step=0.1)

    def collect_from(self, directory: Path) -> None:
        """Also serve what Flower's processes record in ``directory`` (the local backend's exporter)."""
        add_collector(self.registry, directory)

    def start(self, total: int, done: int) -> None:
        self._clock.left = (total - done) * self.rounds
        self.repeats_planned.labels(self.experiment_id).set(total)
        self.repeats_done.labels(self.experiment_id).inc(done)
        self.repeats_failed.labels(self.experiment_id).inc(0)
        self.current_repeat.labels(self.experiment_id).set(-1)
        self.current_round.labels(self.experiment_id).set(0)
        self.flush()

    def repeat_started(self, repeat: int) -> None:
        self.current_repeat.labels(self.experiment_id).set(repeat)
        self.current_round.labels(self.experiment_id).set(0)
        self._clock.repeat_started(time.monotonic())
        self.flush()

    def round_done(self, server_round: int) -> None:
        self.current_round.labels(self.experiment_id).set(server_round)
        eta = self._clock.round_done(server_round, time.monotonic())
        if eta is not None:
            self.eta.labels(self.experiment_id).set(eta)
        self.flush()

    def repeat_finished(self, repeat: int, seconds: float, accuracy: float | None, loss: float | None) -> None:
        self.repeats_done.labels(self.experiment_id).inc()
        self._clock.repeat_finished()
        self.repeat_seconds.labels(self.experiment_id, str(repeat)).set(seconds)
        if accuracy is not None and loss is not None:
            self.final_accuracy.labels(self.experiment_id, str(repeat)).set(accuracy)
            self.final_loss.labels(self.experiment_id, str(repeat)).set(loss)
        self.current_repeat.labels(self.experiment_id).set(-1)
        self.flush()

    def repeat_failed(self) -> None:
        self.repeats_failed.labels(self.experiment_id).inc()
        self._clock.repeat_failed()
        self.flush()

    def flush(self) -> None:
        """Rewrite the text file (node-exporter textfile format)."""
        write_to_textfile(str(self.path), self.registry)
