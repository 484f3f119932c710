"""Scale: does a run with many clients complete here, how long are its rounds, how much memory.

Runs fedimdb with ``tiny`` on the local backend (a SuperLink and N SuperNodes, each behind its
fork server unless ``--cold``), or on the simulation backend (N virtual clients in Ray), for a few
rounds, and samples the machine's memory in use (MemTotal − MemAvailable of /proc/meminfo) while it
runs. Run from the repository root::

    python -m bench.scale                # 50 clients, 3 rounds, local backend
    python -m bench.scale --backend simulation --clients 1000 --fraction-train 0.1
    python -m bench.scale --backend simulation --model minilm --clients 100 --fraction-train 0.1 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

from bench.common import DEFAULT_IMDB, job_args, run_fedimdb, work_dir, write_result
from fedimdb.config import LOCAL_BACKEND, MODEL_PRESETS, SIMULATION_BACKEND

GIB = 2**30


def memory_in_use() -> int:
    """Bytes in use on this machine: MemTotal − MemAvailable."""
    info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()}
    return info["MemTotal"] - info["MemAvailable"]


class PeakMemory(threading.Thread):
    """The highest :func:`memory_in_use` seen every ``interval`` seconds until stopped."""

    def __init__(self, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak = interval, memory_in_use()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, memory_in_use())

    def stop(self) -> int:
        """Stop; the peak in bytes."""
        self._done.set()
        self.join()
        return self.peak


def main(argv: list[str] | None = None) -> int:
    """One run with N clients; round times and the memory it added; bench/results/scale-*.json."""
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="Flower's process model (FEDIMDB_WARM_CLIENTS=false)")
    p.add_argument("--backend", choices=(LOCAL_BACKEND, SIMULATION_BACKEND), default=LOCAL_BACKEND)
    p.add_argument("--model", choices=MODEL_PRESETS, default="tiny")
    p.add_argument("--fraction-train", type=float, default=1.0, help="the share of the clients sampled a round")
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    a = p.parse_args(argv)
    settings = {"max-steps": 1, "batch-size": 16, "max-length": 32, "eval-rows": 200, "local-eval-rows": 50}
    settings["fraction-train"] = a.fraction_train
    env = {"FEDIMDB_NUM_PARTITIONS": str(a.clients), **({"FEDIMDB_WARM_CLIENTS": "false"} if a.cold else {})}
    idle = memory_in_use()
    sampler = PeakMemory()
    started = time.monotonic()
    with work_dir("scale") as work:
        args = job_args(a.model, a.clients, a.rounds, a.data_source, work)
        sampler.start()
        try:
            run = run_fedimdb(work / "results", args, settings, env, backend=a.backend)
        finally:
            peak = sampler.stop()
    rounds = [float(r["round_seconds"]) for r in run.rounds]
    replies = [int(r["clients_participating"]) for r in run.rounds]
    figures = {
        "backend": a.backend,
        "model": a.model,
        "clients": a.clients,
        "fraction_train": a.fraction_train,
        "rounds": a.rounds,
        "warm_clients": not a.cold,
        "settings": settings,
        "round_seconds": rounds,
        "replies_per_round": replies,
        "total_seconds": time.monotonic() - started,
        "memory_idle_gib": idle / GIB,
        "memory_peak_gib": peak / GIB,
        "memory_added_gib": (peak - idle) / GIB,
    }
    print(
        f"{a.clients} clients of {a.model}, {a.backend} backend ({'cold' if a.cold else 'warm'}): rounds {', '.join(f'{s:.1f}' for s in rounds)} s "
        f"(mean {statistics.mean(rounds):.1f}); replies {replies}; memory +{figures['memory_added_gib']:.1f} GiB "
        f"(peak {figures['memory_peak_gib']:.1f} GiB in use)"
    )
    print(f"written: {write_result('scale', figures, sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
