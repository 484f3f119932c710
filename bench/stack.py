"""Compose stack start and peak memory per container.

Runs fedimdb on a Compose stack (images already built) and measures, from the stack's own
timestamped log, how long it takes from the first container's first line to the SuperLink
activating every client (``[Fleet.ActivateNode]``), and how long each client's fork server spends
preloading before its SuperNode starts. A sampler reads every container's memory cgroup each
``--sample-seconds`` while the run goes on: the peak resident set (``rss`` of memory.stat,
sampled) and the kernel's own high-water mark of the cgroup (page cache included). Run from the
repository root::

    python -m bench.stack                # tiny, 10 client containers, 2 rounds
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

import docker

from bench.common import DEFAULT_IMDB, job_args, run_fedimdb, work_dir, write_result
from fedimdb.artifacts import LOGS_DIR
from fedimdb.deploy.docker_backend import COMPOSE_LOG

PROJECT_PREFIX = "fedimdb-"  # compose projects of orchestrate.py (backend.attempt_name)
CGROUP_ROOTS = (Path("/sys/fs/cgroup/memory/docker"), Path("/sys/fs/cgroup/docker"))  # cgroup v1, v2 (cgroupfs)
LINE = re.compile(r"^(?P<service>\S+?)-\d+\s+\|\s+(?P<time>\S+)Z (?P<text>.*)$")
ACTIVATED = "[Fleet.ActivateNode]"
SUPERNODE_STARTED = "Starting Flower SuperNode"
MIB = 2**20


def _cgroup(container_id: str) -> Path | None:
    return next((root / container_id for root in CGROUP_ROOTS if (root / container_id).is_dir()), None)


def _read_rss(group: Path) -> int:
    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
    return int(stat.get("total_rss", stat.get("rss", stat.get("anon", 0))))


def _read_peak(group: Path) -> int:
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (group / name).is_file():
            return int((group / name).read_text())
    return 0


class MemorySampler(threading.Thread):
    """Peak RSS and cgroup high-water mark of every container of a fedimdb Compose project."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks: dict[str, dict[str, int]] = {}
        self._done = threading.Event()
        self._docker = docker.from_env()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            # sparse: the list endpoint's own data, no inspection of containers that may end meanwhile
            containers = [(c.id, c.attrs.get("Labels") or {}) for c in self._docker.containers.list(sparse=True)]
            for container_id, labels in containers:
                if not labels.get("com.docker.compose.project", "").startswith(PROJECT_PREFIX):
                    continue
                group = _cgroup(container_id)
                if group is None:
                    continue
                name = f"{labels['com.docker.compose.service']}"
                try:
                    rss, peak = _read_rss(group), _read_peak(group)
                except OSError:  # the container ended between list() and the read
                    continue
                seen = self.peaks.setdefault(name, {"rss": 0, "cgroup_peak": 0})
                seen["rss"], seen["cgroup_peak"] = max(seen["rss"], rss), max(seen["cgroup_peak"], peak)

    def stop(self) -> dict[str, dict[str, int]]:
        """Stop sampling; the peaks by Compose service."""
        self._done.set()
        self.join()
        return self.peaks


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text[:26])  # microseconds: Docker writes nanoseconds


def log_lines(text: str) -> Iterable[tuple[str, datetime, str]]:
    """(service, time, text) of each line of ``docker compose logs --timestamps``."""
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            yield m["service"], _stamp(m["time"]), m["text"]


def start_times(compose_log: str, clients: int) -> dict[str, float]:
    """Seconds from the first container line to all clients activated; each client's preload."""
    lines = sorted(log_lines(compose_log), key=lambda x: x[1])
    first = lines[0][1]
    activated = [t for service, t, text in lines if service == "server" and ACTIVATED in text]
    if len(activated) < clients:
        raise RuntimeError(f"{len(activated)} of {clients} nodes activated in the stack's log")
    preload = []
    for k in range(clients):
        mine = [(t, text) for service, t, text in lines if service == f"client-{k}"]
        started = next(t for t, text in mine if SUPERNODE_STARTED in text)
        preload.append((started - mine[0][0]).total_seconds())
    return {
        "all_clients_activated_s": (activated[clients - 1] - first).total_seconds(),
        "first_client_activated_s": (activated[0] - first).total_seconds(),
        "client_preload_mean_s": statistics.mean(preload),
        "client_preload_max_s": max(preload),
    }


def summarise(peaks: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float]]:
    """Peaks in MiB; the clients also as mean and max over the client containers."""
    mib = {name: {k: v / MIB for k, v in p.items()} for name, p in sorted(peaks.items())}
    clients = [p for name, p in mib.items() if name.startswith("client-")]
    if clients:
        mib["clients (mean)"] = {k: statistics.mean(p[k] for p in clients) for k in clients[0]}
        mib["clients (max)"] = {k: max(p[k] for p in clients) for k in clients[0]}
    return mib


def main(argv: list[str] | None = None) -> int:
    """One Compose run with the memory sampler; start times from its log; bench/results/stack-*.json."""
    p = argparse.ArgumentParser(prog="python -m bench.stack", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sample-seconds", type=float, default=2.0)
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    a = p.parse_args(argv)
    settings = {"max-steps": 1, "batch-size": 16, "max-length": 32, "eval-rows": 200, "local-eval-rows": 50}
    sampler = MemorySampler(a.sample_seconds)
    with work_dir("stack") as work:
        args = job_args(a.model, a.clients, a.rounds, a.data_source, work)
        sampler.start()
        try:
            run = run_fedimdb(work / "results", args, settings, backend="docker")
        finally:
            peaks = sampler.stop()
        starts = start_times((run.run_dir / LOGS_DIR / COMPOSE_LOG).read_text(), a.clients)
    memory = summarise(peaks)
    for key, value in starts.items():
        print(f"{key:<28}{value:>8.1f} s")
    print(f"{'container':<18}{'peak RSS MiB':>14}{'cgroup peak MiB':>17}")
    for name, p in memory.items():
        print(f"{name:<18}{p['rss']:>14.0f}{p['cgroup_peak']:>17.0f}")
    figures = {
        "model": a.model,
        "clients": a.clients,
        "rounds": a.rounds,
        "settings": settings,
        "round_seconds": [float(r["round_seconds"]) for r in run.rounds],
        "start": starts,
        "memory_mib": memory,
    }
    print(f"written: {write_result('stack', figures, sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
