"""``python orchestrate.py --repeats 2 --model tiny --rounds 1`` on the Docker backend: one Compose
stack per repeat, progress read from run.json in each stack's volume, artifacts pulled out of the
volume with the Docker SDK and verified. (One round a repeat, three clients: tests/test_compose.py runs two
rounds on ten client containers, tests/test_docker_faults.py six.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from fedimdb.artifacts import read_csv, read_json, verify_run
from tests.conftest import orchestrate, require_docker

CLIENTS = 3
pytestmark = [pytest.mark.docker, pytest.mark.timeout(2700)]
require_docker()


def test_two_repeats_on_compose_stacks(imdb_dir: Path, tmp_path: Path) -> None:
    run = orchestrate(
        "--repeats",
        "2",
        "--model",
        "tiny",
        "--clients",
        str(CLIENTS),
        "--rounds",
        "1",
        "--backend",
        "docker",
        "--metrics-port",
        "0",
        "--set",
        "max-steps=2",
        "--set",
        "batch-size=8",
        "--set",
        "eval-rows=64",
        "--set",
        "local-eval-rows=32",
        "--data-source",
        str(imdb_dir),
        "--shards-dir",
        str(tmp_path / "shards"),
        "--out",
        str(tmp_path / "results"),
        timeout=2400,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    (exp,) = (tmp_path / "results").iterdir()
    record = read_json(exp / "experiment.json")
    assert record["backend"] == "docker" and record["status"] == "completed"
    for k in (0, 1):
        run = verify_run(exp / f"repeat-{k}")
        assert run["seed"] == 42 + k and run["config"]["num-clients"] == CLIENTS
        assert (exp / f"repeat-{k}" / "logs" / "compose.log").is_file()
        assert len(read_csv(exp / f"repeat-{k}" / "clients.csv")) == CLIENTS
    # The round reached the orchestrator through run.json in the volume (its last value stays exported).
    assert re.search(r"^fedimdb_current_round\{[^}]*\} 1\.0$", (exp / "metrics.prom").read_text(), re.MULTILINE)
    summary = read_csv(exp / "summary.csv")
    assert {r["metric"] for r in summary} >= {"central_accuracy", "central_loss"}
    assert all(r["n"] == "2" and r["std"] != "" for r in summary)
    for png in ("accuracy.png", "loss.png", "client-train-loss.png", "round-seconds.png"):
        assert (exp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    projects = subprocess.run(["docker", "compose", "ls", "-a", "--format", "json"], capture_output=True, text=True)
    assert exp.name.lower()[:20] not in projects.stdout, "a repeat's stack was left up"
    volumes = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True).stdout
    assert "fedimdb-" + exp.name.lower()[:20] not in volumes
