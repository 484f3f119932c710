"""One long-lived exporter per container for the metrics of Flower's short-lived processes.

``start(port, directory)`` empties ``directory``, starts ``python -m fedimdb.metrics.exporter PORT
DIRECTORY`` beside the caller, and returns the environment that the caller's children (the
SuperLink or SuperNode, and through them every ServerApp and ClientApp process) need to record
into it. The exporter serves what all of them recorded at ``http://0.0.0.0:PORT/metrics``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_VAR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own switch to multiprocess mode
CONTAINER_METRICS_DIR = Path("/tmp/fedimdb-metrics")  # in the server and client containers


def reset(directory: Path) -> None:
    """An empty ``directory`` for a fresh set of processes (the library's advice: wipe it at start)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.db"):
        old.unlink()


def add_collector(registry: CollectorRegistry, directory: Path) -> None:
    """Serve, through ``registry``, everything recorded in ``directory``."""
    MultiProcessCollector(registry, path=str(directory))


def start(port: int, directory: Path = CONTAINER_METRICS_DIR) -> dict[str, str]:
    """The exporter of ``directory`` on ``port`` as a child process; the environment its recorders need.

    ``port`` 0: no exporter, and an empty environment (the processes record into themselves only).
    """
    if not port:
        return {}
    reset(directory)
    subprocess.Popen([sys.executable, "-m", __name__, str(port), str(directory)])
    return {MULTIPROC_VAR: str(directory)}


def main(argv: list[str] | None = None) -> None:
    """``python -m fedimdb.metrics.exporter PORT DIRECTORY``: serve until killed."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2 or not args[0].isdigit():
        sys.exit("usage: python -m fedimdb.metrics.exporter PORT DIRECTORY")
    registry = CollectorRegistry()
    add_collector(registry, Path(args[1]))
    start_http_server(int(args[0]), registry=registry)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
