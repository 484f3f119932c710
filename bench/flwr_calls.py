"""What one ``flwr`` call costs: Flower's own command against the shim served warm, side by side.

The orchestrator, the Compose runner and the server container reach the SuperLink's Control API
through the ``flwr`` command line (run, ls every 10 s, log, supernode register/list). Each call is a
fresh Python process that imports flwr's CLI again. ``forkserver.cli_env`` makes ``flwr`` a shim that
a warm fork server forks instead. Both ways ask a real local SuperLink for its runs (``flwr ls``),
in alternating batches; the machine's busy CPU time (/proc/stat: every process, the SuperLink's
answers included) and the wall time per call are measured. Run from the repository root::

    python -m bench.flwr_calls [--calls 20] [--batches 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from bench.common import work_dir, write_result
from fedimdb.deploy import flwr_cli, forkserver
from fedimdb.deploy.local import free_port
from fedimdb.deploy.processes import superlink_argv
from fedimdb.deploy.topology import LOCAL_CONNECTION, LOOPBACK
from fedimdb.waiting import wait_until

COLD, WARM = "flower", "warm"
TICKS = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds the machine has spent busy since boot (all cores, /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS  # less idle and iowait


def _answers(env: Mapping[str, str]) -> bool:
    flwr = subprocess.run(["flwr", "ls", LOCAL_CONNECTION, "--format", "json"], env=env, capture_output=True)
    return b'"success": true' in flwr.stdout


def batch(env: Mapping[str, str], calls: int) -> tuple[float, float]:
    """``calls`` × ``flwr ls``: busy CPU seconds and wall seconds per call."""
    cpu, wall = busy_seconds(), time.monotonic()
    for _ in range(calls):
        assert _answers(env), "flwr ls failed"
    return (busy_seconds() - cpu) / calls, (time.monotonic() - wall) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--calls", type=int, default=20, help="flwr ls calls per batch")
    p.add_argument("--batches", type=int, default=4, help="batches per way (the ways alternate)")
    args = p.parse_args()
    with work_dir("flwr-calls") as work:
        env = {"FLWR_HOME": str(work), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        control, fleet = free_port(), free_port()
        argv = superlink_argv(f"{LOOPBACK}:{fleet}", LOOPBACK, control)
        link = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            flwr_cli.write_connection(work, LOCAL_CONNECTION, f"{LOOPBACK}:{control}")
            ways = {COLD: {**os.environ, **env}, WARM: forkserver.cli_env(env)}
            assert wait_until(lambda: _answers(ways[COLD]), 60, 1.0), "the SuperLink did not answer"
            figures: dict[str, list[tuple[float, float]]] = {COLD: [], WARM: []}
            for _ in range(args.batches):
                for way, way_env in ways.items():
                    figures[way].append(batch(way_env, args.calls))
        finally:
            link.terminate()
            link.wait(timeout=30)
    cpu = {way: statistics.median(c for c, _ in rows) for way, rows in figures.items()}
    wall = {way: statistics.median(w for _, w in rows) for way, rows in figures.items()}
    for way in figures:
        print(f"{way:>6}: {cpu[way]:.3f} CPU-s and {wall[way]:.3f} s a call (median of {args.batches} batches)")
    print(f"CPU a call, flower/warm: {cpu[COLD] / cpu[WARM]:.1f}; wall: {wall[COLD] / wall[WARM]:.1f}")
    result = {"calls_per_batch": args.calls, "batches": figures, "cpu_per_call": cpu, "wall_per_call": wall}
    print(write_result("flwr_calls", result, [sys.executable, "-m", "bench.flwr_calls", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
