"""Does SuperLink state on disk help a server that died carry on? Two ways, side by side (issue 22 item 2).

A server container holds the SuperLink, its SuperExec and the ServerApp: when it dies, all three
go. Here a local federation with TLS and SuperNode authentication (as the containers run it) runs a
``tiny`` job; once round 1 is archived, all three are SIGKILLed (the SuperExec leads a session of its own). Then:

- ``fresh``, what the orchestrator does: stop what is left and start a new federation (in-memory
  SuperLink, new SuperNodes), then a run that continues after round 1 (``continue-from``);
- ``database``: the SuperLink ran on a ``--database`` file; start it again on that file, keep the
  SuperNodes, then the same continued run.

For each: whether the interrupted run carried on by itself (its status on the restarted SuperLink),
whether the SuperNodes came back as the same nodes, and the seconds from the kill until the
continued run had archived round 2 (time to accuracy). Run from the repository root::

    python -m bench.server_restart [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_IMDB, work_dir, write_result
from fedimdb.artifacts import ROUNDS_FILE, read_csv
from fedimdb.config import DataConfig, RunConfig
from fedimdb.data import SERVER_DIR, prepare_shards
from fedimdb.deploy import APP_DIR, flwr_cli
from fedimdb.deploy.credentials import make_credentials
from fedimdb.deploy.local import LocalFederation, process_env
from fedimdb.deploy.topology import LOCAL_CONNECTION
from fedimdb.waiting import wait_until

FRESH, DATABASE = "fresh", "database"
CLIENTS = 3
JOB = replace(RunConfig(), model="tiny", num_clients=CLIENTS, num_rounds=3, max_steps=4, eval_rows=200)
ROUND_WAIT = 600.0  # seconds a round may take before the benchmark gives up


@dataclass(frozen=True)
class Recovery:
    """How one way got a killed server's run going again."""

    way: str
    restart_seconds: float  # from the kill until a run could be submitted
    to_round_2_seconds: float  # from the kill until the continued run had archived round 2
    interrupted_run: str  # its status on the restarted SuperLink at that point ("unknown" where it is gone)
    same_nodes: bool  # the SuperNodes online after the restart are the nodes they were before


def run_config(shards: Path, out: Path, continue_from: Path | None = None) -> dict[str, Any]:
    """The job's run config, writing into ``out``; continuing after ``continue_from``'s last round if given."""
    extra = {"continue-from": str(continue_from)} if continue_from else {}
    return {**JOB.as_dict(), "held-out-dir": str(shards / SERVER_DIR), "output-dir": str(out), **extra}


def submit(fed: LocalFederation, config: dict[str, Any]) -> int:
    """``flwr run`` fedimdb's app with ``config`` on ``fed``; the run id."""
    with tempfile.TemporaryDirectory(prefix="fedimdb-bench-submit-") as tmp:
        return flwr_cli.submit_run(APP_DIR, LOCAL_CONNECTION, config, fed.env, Path(tmp))


def await_round(run_dir: Path, done: int) -> None:
    """Block until ``run_dir``'s rounds.csv holds round ``done``."""

    def archived() -> bool:
        path = run_dir / ROUNDS_FILE
        return path.is_file() and any(r["round"] == str(done) for r in read_csv(path))

    if not wait_until(archived, ROUND_WAIT, 0.2):
        raise RuntimeError(f"round {done} not archived in {run_dir} within {ROUND_WAIT:.0f} s")


def online_nodes(fed: LocalFederation) -> set[int]:
    """The node ids ``fed``'s SuperLink counts online."""
    return flwr_cli.online_nodes(LOCAL_CONNECTION, fed.env)


def run_status(fed: LocalFederation, run_id: int) -> str:
    """The run's status on ``fed``'s SuperLink, or "unknown" where it does not know the run."""
    try:
        return str(flwr_cli.run_status(LOCAL_CONNECTION, run_id, fed.env)["status"])
    except flwr_cli.FlowerRunError:
        return "unknown"


def federation(way: str, work: Path, shards: Path, name: str) -> LocalFederation:
    """A federation of :data:`CLIENTS` SuperNodes with authentication; on a database file for ``database``."""
    home = work / name
    env = process_env(JOB, home)
    creds = make_credentials(home / "credentials", CLIENTS)
    database = home / "superlink.db" if way == DATABASE else None
    return LocalFederation(shards, CLIENTS, home / "logs", env, credentials=creds, database=database)


def recover(way: str, work: Path, shards: Path) -> Recovery:
    """Round 1, the kill, and this way's restart, up to the continued run's round 2."""
    first, second = work / "run-1", work / "run-2"
    with contextlib.ExitStack() as stack:
        fed = stack.enter_context(federation(way, work, shards, "federation-1"))
        wait_until(lambda: len(online_nodes(fed)) == CLIENTS, 60, 1.0)
        before = online_nodes(fed)
        run_id = submit(fed, run_config(shards, first))
        await_round(first, 1)
        killed = time.monotonic()
        if way == DATABASE:
            fed.restart_superlink()
        else:
            fed.stop()
            fed = stack.enter_context(federation(way, work, shards, "federation-2"))
        restarted = time.monotonic() - killed
        submit(fed, run_config(shards, second, continue_from=first))
        await_round(second, 2)
        to_round_2 = time.monotonic() - killed
        return Recovery(way, restarted, to_round_2, run_status(fed, run_id), online_nodes(fed) == before)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.server_restart", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1, help="kills per way (the ways alternate)")
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB, help="folder with IMDB's Parquet files")
    args = p.parse_args(argv)
    with work_dir("server-restart") as work:
        shards = prepare_shards(
            DataConfig(data_source=str(args.data_source), num_partitions=CLIENTS, shards_dir=str(work / "shards")),
            log=lambda *_: None,
        )
        results = [recover(way, work / f"{way}-{i}", shards) for i in range(args.repeats) for way in (FRESH, DATABASE)]
    for r in results:
        print(
            f"{r.way:>8}: restarted in {r.restart_seconds:5.1f} s, continued run's round 2 archived "
            f"{r.to_round_2_seconds:5.1f} s after the kill; interrupted run {r.interrupted_run}; "
            f"same nodes: {r.same_nodes}"
        )
    median = {w: statistics.median(r.to_round_2_seconds for r in results if r.way == w) for w in (FRESH, DATABASE)}
    ratio = median[FRESH] / median[DATABASE]
    print(f"kill -> round 2, fresh/database: {ratio:.2f} (medians {median[FRESH]:.1f} s / {median[DATABASE]:.1f} s)")
    figures = {"job": JOB.as_dict(), "recoveries": [asdict(r) for r in results], "ratio_fresh_database": ratio}
    print(write_result("server_restart", figures, [sys.executable, "-m", "bench.server_restart", *sys.argv[1:]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
