"""A repeat whose ServerApp is killed goes on, in its next attempt, after the last round it archived.

Real local runs (SuperLink + 3 SuperNodes over gRPC, TLS and authentication): one of 4 rounds
never interrupted, and one with the same seed whose ``flwr-serverapp`` is SIGKILLed once round 2
is archived, each sampling 2 of the 3 clients per round. The second attempt (new node ids) continues
from round 3 and must end with the same rows, sampled partitions included, and the same final model,
byte for byte. The unit tests of the state it continues from:
tests/test_continuation.py.

The same seed on the simulation backend (Flower's Simulation Engine on Ray, virtual clients with node ids
of its own) must sample the same partitions too, and end with the same rows and every archived model (the
global model of each round and each client's update) byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from fedimdb.artifacts import (
    CLIENT_UPDATES_FILE,
    CLIENTS_FILE,
    FINAL_WEIGHTS,
    ROUNDS_FILE,
    WEIGHT_STATS_FILE,
    WEIGHTS_DIR,
    read_csv,
    verify_run,
)
from fedimdb.experiment_record import EXPERIMENT_FILE, ExperimentRecord, RepeatStatus
from fedimdb.run_record import read_run_record
from tests.conftest import TIMING_COLUMNS, Orchestrator, local_run_args, marked_processes, orchestrate

pytestmark = pytest.mark.slow
ROUNDS, KILLED_AFTER = 4, 2
SETTINGS = [
    "max-steps=2",
    "max-length=32",
    "batch-size=32",
    "eval-rows=64",
    "local-eval-rows=32",
    "strategy=fedadam",
    "fraction-train=0.67",  # 2 of 3 sampled per round: the continued attempt's nodes are new, its sample must not be
    "archive-client-weights=true",
]


def _rows(run_dir: Path, table: str) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in read_csv(run_dir / table)]


def _kill_serverapp_after(results: Path, run: Orchestrator, server_round: int, timeout: float = 300) -> None:
    """SIGKILL the run's flwr-serverapp once run.json says ``server_round`` rounds are archived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.returncode is None:
        with contextlib.suppress(OSError, ValueError):
            found = list(results.glob("*/repeat-0/run.json"))
            if found and read_run_record(found[0]).rounds_completed >= server_round:
                break
        time.sleep(0.2)
    serverapps = [p for p in marked_processes(run.mark) if "flwr-serverapp" in " ".join(p.cmdline()[:2])]
    assert serverapps, "the run's flwr-serverapp process was found"
    os.kill(serverapps[0].pid, signal.SIGKILL)


def _args(results: Path, shards: Path, imdb_dir: Path) -> list[str]:
    return local_run_args(results, shards, imdb_dir, clients=3, rounds=ROUNDS, settings=SETTINGS)


@pytest.fixture(scope="module")
def uninterrupted(shards: Path, imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of the run of every round, never interrupted, on the local backend."""
    results = tmp_path_factory.mktemp("whole")
    whole = orchestrate(*_args(results, shards, imdb_dir), "--retries", "0")
    assert whole.returncode == 0, whole.stderr[-3000:]
    (run_dir,) = (p / "repeat-0" for p in results.iterdir())
    assert {r["clients_sampled"] for r in read_csv(run_dir / ROUNDS_FILE)} == {"2"}, "2 of 3 sampled"
    return run_dir


def _same_run(run_dir: Path, uninterrupted: Path) -> None:
    """Every table's rows (timings and node ids aside) and the final model, byte for byte."""
    for table in (ROUNDS_FILE, CLIENTS_FILE, WEIGHT_STATS_FILE, CLIENT_UPDATES_FILE):
        assert _rows(run_dir, table) == _rows(uninterrupted, table), table
    final = f"{WEIGHTS_DIR}/{FINAL_WEIGHTS}"
    assert verify_run(run_dir).files[final] == verify_run(uninterrupted).files[final], "the final models differ"


def test_a_killed_serverapp_is_continued_after_its_last_archived_round(
    shards: Path, imdb_dir: Path, tmp_path: Path, uninterrupted: Path
) -> None:
    with Orchestrator(*_args(tmp_path / "cut", shards, imdb_dir), "--retries", "1") as cut:
        _kill_serverapp_after(tmp_path / "cut", cut, KILLED_AFTER)
        cut.wait(timeout=600)
    assert cut.returncode == 0, cut.stderr[-3000:]

    (exp,) = (tmp_path / "cut").iterdir()
    record = ExperimentRecord.from_json(json.loads((exp / EXPERIMENT_FILE).read_text()))
    first, second = record.repeats["0"].attempts
    assert first.status == RepeatStatus.FAILED and first.set_aside
    assert (second.continued_from, second.continued_after_round) == (first.set_aside, KILLED_AFTER)
    continued = verify_run(exp / "repeat-0")
    assert [(c.round, Path(c.folder).name) for c in continued.continued_from] == [(KILLED_AFTER, first.set_aside)]
    assert read_run_record(exp / first.set_aside / "run.json").run_id == continued.continued_from[0].run_id

    _same_run(exp / "repeat-0", uninterrupted)


def test_the_simulation_backend_samples_the_same_partitions(
    shards: Path, imdb_dir: Path, tmp_path: Path, uninterrupted: Path
) -> None:
    simulated = orchestrate(*_args(tmp_path, shards, imdb_dir), "--backend", "simulation", "--retries", "0")
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    (exp,) = tmp_path.iterdir()
    assert json.loads((exp / EXPERIMENT_FILE).read_text())["backend"] == "simulation"
    _same_run(exp / "repeat-0", uninterrupted)
    local, simulated_run = verify_run(uninterrupted), verify_run(exp / "repeat-0")
    models = sorted(
        name for name in local.files if name.startswith(f"{WEIGHTS_DIR}/") and name.endswith(".safetensors")
    )
    assert len(models) == 2 + ROUNDS * (1 + 2), models  # rounds 0-4, final, the 2 sampled clients' of each round
    assert {n: simulated_run.files.get(n) for n in models} == {n: local.files[n] for n in models}
