"""Where a small run's CPU goes, by kind of process: the fixed work every run carries.

One local run of the test suite's shape (``tiny``, 3 clients, 2 rounds, no training steps: what is left
is the deployment's own work; a 1-round run before it prepares the shards), with every process on the machine sampled from /proc every 0.2 s: the
CPU seconds of each process that appeared during the run, summed by kind (the fork servers with the
tasks they fork, the SuperNodes, the SuperLink, its SuperExecs, the ServerApp, the orchestrator, the
warm ``flwr`` calls). A process that lives less than a sample apart is missed. Run from the repository
root::

    python -m bench.run_cpu [--clients 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.common import DEFAULT_IMDB, job_args, run_fedimdb, work_dir, write_result

TICKS = os.sysconf("SC_CLK_TCK")
KINDS = (  # (kind, what its command line holds), the first that matches
    ("flwr calls (warm)", "fedimdb.deploy.forkserver --cli"),
    ("fork servers and their tasks", "fedimdb.deploy.forkserver"),
    ("SuperNodes", "flower-supernode"),
    ("SuperLink", "flower-superlink"),
    ("SuperExecs", "flower-superexec"),
    ("ServerApp", "flwr-serverapp"),
    ("orchestrator", "orchestrate.py"),
)
SETTINGS = {"max-steps": 0, "max-length": 32, "batch-size": 32, "eval-rows": 64, "local-eval-rows": 32}


def kind_of(cmdline: str) -> str:
    """The kind of a process, from its command line."""
    return next((kind for kind, mark in KINDS if mark in cmdline), "other")


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process now: pid -> (command line, CPU seconds so far)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        found[int(entry.name)] = (cmdline, (int(fields[11]) + int(fields[12])) / TICKS)
    return found


class CpuSampler(threading.Thread):
    """The most CPU seen of each process that was not running when it started, every ``interval`` s."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval, self.before = interval, set(cpu_seconds())
        self.seen: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            for pid, (cmdline, seconds) in cpu_seconds().items():
                known, before = self.seen.get(pid, ("", 0.0))
                if pid not in self.before and seconds >= before:
                    self.seen[pid] = (cmdline or known, seconds)  # a zombie's command line is empty

    def stop(self) -> dict[str, float]:
        """Stop; CPU seconds by kind."""
        self._done.set()
        self.join()
        by_kind: Counter[str] = Counter()
        for cmdline, seconds in self.seen.values():
            by_kind[kind_of(cmdline)] += seconds
        return dict(by_kind.most_common())


def main(argv: list[str] | None = None) -> int:
    """One run; CPU seconds by kind of process; bench/results/run_cpu-*.json."""
    p = argparse.ArgumentParser(prog="python -m bench.run_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    a = p.parse_args(argv)
    with work_dir("run_cpu") as work:
        run_fedimdb(work / "warm-up", job_args("tiny", a.clients, 1, a.data_source, work), SETTINGS)  # the shards
        sampler = CpuSampler()
        started = time.monotonic()
        sampler.start()
        try:
            run_fedimdb(work / "results", job_args("tiny", a.clients, a.rounds, a.data_source, work), SETTINGS)
        finally:
            by_kind = sampler.stop()
    wall, total = time.monotonic() - started, sum(by_kind.values())
    for kind, seconds in by_kind.items():
        print(f"{kind:30s} {seconds:6.1f} CPU-s  {seconds / total:5.1%}")
    print(f"{'all':30s} {total:6.1f} CPU-s in {wall:.1f} s of wall time")
    figures = {
        "clients": a.clients,
        "rounds": a.rounds,
        "settings": SETTINGS,
        "wall_seconds": wall,
        "cpu_seconds": by_kind,
    }
    print(f"written: {write_result('run_cpu', figures, sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
