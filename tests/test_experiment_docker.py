"""``python orchestrate.py --model tiny --rounds 4`` on the Docker backend: one Compose stack per
attempt, progress read from run.json in each stack's volume, artifacts pulled out of the volume with
the Docker SDK and verified. Nothing archived is lost:

- the server container is SIGKILLed once round 2 is archived: the failed stack's archived rounds
  are copied out of its volume, and a fresh stack continues after round 2;
- the orchestrator itself is SIGKILLed once that stack archived round 3: ``--resume`` stops the stack
  it left, keeps what that stack archived, and a third stack continues after round 3.

The repeat must then end with the rows and the final model of an uninterrupted run with its seed
(run on the local backend: the same code, packages and single-threaded kernels), and the folders
set aside keep their files. One repeat (three stacks): that ``--resume`` leaves verified repeats
byte-identical is the experiment loop's, the same on every backend (tests/test_experiment_local.py).
(Three clients: tests/test_compose.py runs ten client containers, tests/test_docker_faults.py kills
client containers.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

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
from fedimdb.deploy.docker_artifacts import RUNNER_SERVICE, read_run_file, service_containers
from fedimdb.deploy.topology import SERVER_HOST
from fedimdb.experiment_record import EXPERIMENT_FILE, ExperimentRecord, RepeatStatus
from tests.conftest import TIMING_COLUMNS, Orchestrator, local_run_args, orchestrate, require_docker

CLIENTS, ROUNDS, SEED = 3, 4, 42
SERVER_KILLED_AFTER, ORCHESTRATOR_KILLED_AFTER = 2, 3
SETTINGS = [
    "max-steps=2",
    "batch-size=8",
    "eval-rows=64",
    "local-eval-rows=32",
    "strategy=fedadam",  # server state that must be continued exactly
    "torch-threads=1",  # the same kernels in a container and in a local process
]
pytestmark = [pytest.mark.docker, pytest.mark.timeout(2700)]
require_docker()


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rows(run_dir: Path, table: str) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in read_csv(run_dir / table)]


def _wait_for_round(client: Any, project_suffix: str, rounds: int, run: Orchestrator, timeout: float = 900) -> str:
    """The Compose project ending in ``project_suffix`` once its run.json says ``rounds`` rounds are archived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.proc.poll() is None:
        for runner in client.containers.list(filters={"label": f"com.docker.compose.service={RUNNER_SERVICE}"}):
            project = runner.labels["com.docker.compose.project"]
            if project.endswith(project_suffix):
                record = read_run_file(runner, "repeat-0")
                if record is not None and record.rounds_completed >= rounds:
                    return project
        time.sleep(0.5)
    raise AssertionError(f"no stack {project_suffix} archived round {rounds}: {run.proc.poll()=}")


def _docker_args(tmp_path: Path, imdb_dir: Path) -> list[str]:
    args = ["--repeats", "1", "--model", "tiny", "--clients", str(CLIENTS), "--rounds", str(ROUNDS)]
    args += ["--backend", "docker", "--metrics-port", "0", "--retries", "1", "--seed", str(SEED)]
    args += [
        "--data-source",
        str(imdb_dir),
        "--shards-dir",
        str(tmp_path / "shards"),
        "--out",
        str(tmp_path / "results"),
    ]
    return args + [a for s in SETTINGS for a in ("--set", s)]


def test_compose_repeats_continue_after_a_killed_server_and_a_killed_orchestrator(
    imdb_dir: Path, tmp_path: Path
) -> None:
    import docker

    client = docker.from_env()
    with Orchestrator(*_docker_args(tmp_path, imdb_dir)) as cut:
        project = _wait_for_round(client, "-r0-a1", SERVER_KILLED_AFTER, cut)
        (exp,) = (tmp_path / "results").iterdir()
        (server,) = service_containers(client, project, SERVER_HOST)
        os.kill(server.attrs["State"]["Pid"], signal.SIGKILL)
        left = _wait_for_round(client, "-r0-a2", ORCHESTRATOR_KILLED_AFTER, cut)
        set_aside = {p.name: _digests(p) for p in exp.glob("repeat-0.*")}
        os.killpg(cut.proc.pid, signal.SIGKILL)
        cut.wait(timeout=60)
    assert [c for c in client.containers.list() if c.labels.get("com.docker.compose.project") == left], "left up"

    resumed = orchestrate("--out", str(tmp_path / "results"), "--resume", exp.name, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert f"removed its Compose project {left}" in resumed.stderr, resumed.stderr[-3000:]
    record = ExperimentRecord.from_json(json.loads((exp / EXPERIMENT_FILE).read_text()))
    assert record.status == "completed"
    first, second, third = record.repeats["0"].attempts
    assert first.status == RepeatStatus.FAILED and "the server container exited with code 137" in (first.error or "")
    assert (second.continued_from, second.continued_after_round) == (first.set_aside, SERVER_KILLED_AFTER), (
        cut.stdout[-2000:] + cut.stderr[-3000:]  # e.g. "not continued, it does not verify (...)"
    )
    assert second.status == RepeatStatus.ABANDONED and second.set_aside
    assert (third.continued_from, third.continued_after_round) == (second.set_aside, ORCHESTRATOR_KILLED_AFTER)
    assert third.status == RepeatStatus.VERIFIED
    assert list(set_aside) == [first.set_aside]
    assert {name: _digests(exp / name) for name in set_aside} == set_aside, "what was set aside stays as it was"

    continued = verify_run(exp / "repeat-0")
    assert [(c.round, Path(c.folder).name) for c in continued.continued_from] == [
        (SERVER_KILLED_AFTER, first.set_aside),
        (ORCHESTRATOR_KILLED_AFTER, second.set_aside),
    ]
    whole = orchestrate(
        *local_run_args(
            tmp_path / "whole", tmp_path / "shards", imdb_dir, clients=CLIENTS, rounds=ROUNDS, settings=SETTINGS
        ),
        "--seed",
        str(SEED),
        "--retries",
        "0",
        timeout=900,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    (uninterrupted,) = (p / "repeat-0" for p in (tmp_path / "whole").iterdir())
    for table in (ROUNDS_FILE, CLIENTS_FILE, WEIGHT_STATS_FILE, CLIENT_UPDATES_FILE):
        assert _rows(exp / "repeat-0", table) == _rows(uninterrupted, table), table
    final = f"{WEIGHTS_DIR}/{FINAL_WEIGHTS}"
    assert continued.files[final] == verify_run(uninterrupted).files[final], "the final models differ"

    assert continued.seed == SEED and continued.config["num-clients"] == CLIENTS
    assert (exp / "repeat-0" / "logs" / "compose.log").is_file()
    # The round reached the orchestrator through run.json in the volume (its last value stays exported).
    metrics = (exp / "metrics.prom").read_text()
    assert re.search(rf"^fedimdb_current_round\{{[^}}]*\}} {ROUNDS}\.0$", metrics, re.MULTILINE)
    summary = read_csv(exp / "summary.csv")
    assert {r["metric"] for r in summary} >= {"central_accuracy", "central_loss"}
    assert all(r["n"] == "1" for r in summary)
    for png in ("accuracy.png", "loss.png", "client-train-loss.png", "round-seconds.png"):
        assert (exp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    projects = subprocess.run(["docker", "compose", "ls", "-a", "--format", "json"], capture_output=True, text=True)
    assert exp.name.lower()[:20] not in projects.stdout, "a repeat's stack was left up"
    volumes = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True).stdout
    assert "fedimdb-" + exp.name.lower()[:20] not in volumes
