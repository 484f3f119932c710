"""``python orchestrate.py --repeats 2 --model tiny --rounds 1`` on the Docker backend: one Compose
stack per repeat, progress read from run.json in each stack's volume, artifacts pulled out of the
volume with the Docker SDK and verified. Repeat 1's server container is SIGKILLed as its run
starts: the attempt fails at once, a fresh stack redoes the repeat, and repeat 0 is left as it was. (One round a repeat, three clients: tests/test_compose.py runs two
rounds on ten client containers, tests/test_docker_faults.py six.)"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fedimdb.artifacts import read_csv, read_json, verify_run
from fedimdb.deploy.docker_artifacts import RUNNER_SERVICE, read_run_file, service_containers
from fedimdb.deploy.topology import SERVER_HOST
from tests.conftest import orchestrate, require_docker

CLIENTS = 3
pytestmark = [pytest.mark.docker, pytest.mark.timeout(2700)]
require_docker()


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class ServerKiller:
    """Watches the orchestrator; once repeat 1's first stack has started its run, SIGKILLs that stack's
    server container (as a crash would) and notes repeat 0's files as they were then."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.repeat_0: dict[str, str] = {}
        self.killed = ""

    def __call__(self, proc: subprocess.Popen) -> None:
        import docker

        client = docker.from_env()
        while proc.poll() is None and not self.killed:
            for runner in client.containers.list(filters={"label": f"com.docker.compose.service={RUNNER_SERVICE}"}):
                project = runner.labels["com.docker.compose.project"]
                if project.endswith("-r1-a1") and read_run_file(runner, "repeat-1"):
                    (exp,) = self.results.iterdir()
                    self.repeat_0 = _digests(exp / "repeat-0")
                    (server,) = service_containers(client, project, SERVER_HOST)
                    os.kill(server.attrs["State"]["Pid"], signal.SIGKILL)
                    self.killed = project
            time.sleep(0.5)


def test_two_repeats_on_compose_stacks_survive_a_killed_server(imdb_dir: Path, tmp_path: Path) -> None:
    killer = ServerKiller(tmp_path / "results")
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
        watch=killer,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    assert killer.killed, "repeat 1's server container was killed"
    (exp,) = (tmp_path / "results").iterdir()
    record = read_json(exp / "experiment.json")
    assert record["backend"] == "docker" and record["status"] == "completed"
    first, second = record["repeats"]["1"]["attempts"]
    assert first["status"] == "failed" and "the server container exited with code 137" in first["error"]
    assert second["status"] == "verified"
    assert _digests(exp / "repeat-0") == killer.repeat_0, "repeat 0's files were left as they were"
    for k in (0, 1):
        run = verify_run(exp / f"repeat-{k}")
        assert run.seed == 42 + k and run.config["num-clients"] == CLIENTS
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
