"""Faults on the Docker backend, watched by a real Prometheus: client containers that crash
mid-round come back and rejoin, and their silence raises an alert.

``orchestrate.py --backend docker --monitoring`` with 10 client containers; partitions 1, 4 and 7
are slowed (the tests' fault app, tests/fault_app) so that round 2 is still going on when their containers' main
processes are SIGKILLed from the host, as a crash would (``docker kill`` would count as a
deliberate stop, which Docker's restart policy leaves alone). The monitoring project's Prometheus
(the host's Debian binary in an image; Grafana cannot run here, a sleeping container stands in)
scrapes every container and the orchestrator; promtool checks the server's, a client's and the
orchestrator's /metrics text. Needs Docker (see test_compose.py) and prometheus.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fedimdb.artifacts import read_csv, verify_run
from fedimdb.config import ExperimentConfig
from fedimdb.deploy.docker_artifacts import RUNNER_SERVICE, read_run_file, service_containers
from fedimdb.deploy.local import free_port
from fedimdb.deploy.monitoring import MONITORING_PROFILE, MONITORING_PROJECT
from fedimdb.deploy.topology import SERVER_HOST
from monitoring.dashboard import render
from server.records import ClientStatus
from tests.conftest import ROOT, Orchestrator, compose, fault_app, require_docker
from tests.monitoring_checks import (
    DASHBOARD,
    build_monitoring_images,
    check_dashboard,
    check_federation_metrics,
    container_exposition,
    fired,
    held,
    promtool_accepts,
    require_prometheus,
    wait_ready,
)

KILLED = (1, 4, 7)
ROUNDS = 6  # rounds of ~15 s: a restarted client is back ~90 s after the kill (its old session must lapse)
SETTINGS = ["max-steps=2", "batch-size=8", "eval-rows=64", "local-eval-rows=32"]
PROJECT_LABEL = "com.docker.compose.project"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]
require_docker()
require_prometheus()


def _running_project(client, deadline: float) -> str:
    """The Compose project of the one fedimdb runner running now."""
    while time.monotonic() < deadline:
        runners = client.containers.list(filters={"label": f"com.docker.compose.service={RUNNER_SERVICE}"})
        projects = [c.labels[PROJECT_LABEL] for c in runners if c.labels[PROJECT_LABEL].startswith("fedimdb-")]
        if projects:
            return projects[0]
        time.sleep(1)
    raise AssertionError("no fedimdb runner started")


def _wait_for_round(client, project: str, rounds: int, deadline: float) -> None:
    (runner,) = service_containers(client, project, RUNNER_SERVICE)
    while time.monotonic() < deadline:
        record = read_run_file(runner, "repeat-0")  # None until the ServerApp wrote it
        if record is not None and record.rounds_completed >= rounds:
            return
        time.sleep(0.5)
    raise AssertionError(f"round {rounds} did not complete in time")


@pytest.fixture
def monitoring(tmp_path: Path):
    """The monitoring profile's images and host ports; the monitoring project is removed afterwards."""
    env = {
        **build_monitoring_images(tmp_path / "images"),
        "PROMETHEUS_PORT": str(free_port()),
        "GRAFANA_PORT": str(free_port()),
    }
    yield env
    down = compose(
        [ROOT / "docker-compose.yml"],
        "--profile",
        MONITORING_PROFILE,
        "down",
        "-v",
        "-t",
        "5",
        project=MONITORING_PROJECT,
        timeout=300,
    )
    assert down.returncode == 0, down.stderr


def test_crashed_client_containers_restart_and_rejoin(imdb_dir: Path, tmp_path: Path, monitoring: dict) -> None:
    import docker

    client = docker.from_env()
    args = [
        "--backend",
        "docker",
        "--monitoring",
        "--model",
        "tiny",
        "--clients",
        "10",
        "--rounds",
        str(ROUNDS),
        "--retries",
        "0",
        "--data-source",
        str(imdb_dir),
        "--shards-dir",
        str(tmp_path / "shards"),
        "--out",
        str(tmp_path / "results"),
    ] + [a for s in SETTINGS for a in ("--set", s)]
    app = fault_app(",".join(f"{k}:slow=10" for k in KILLED), tmp_path / "app")
    start = time.time()
    with Orchestrator(*args, "--app-dir", str(app), env=monitoring) as run:
        deadline = time.monotonic() + 900
        project = _running_project(client, deadline)
        _wait_for_round(client, project, 1, deadline)
        for k in KILLED:  # round 2 has begun; these clients sleep 10 s before training
            (container,) = service_containers(client, project, f"client-{k}")
            os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)
        ports = ExperimentConfig()
        (server,) = service_containers(client, project, SERVER_HOST)
        (client_0,) = service_containers(client, project, "client-0")
        expositions = {
            "server": container_exposition(server, ports.server_metrics_port),
            "client-0": container_exposition(client_0, ports.client_metrics_port),
        }
        run.wait(timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    prometheus = f"http://127.0.0.1:{monitoring['PROMETHEUS_PORT']}"
    wait_ready(prometheus, 60)  # up across the experiment, and after it
    check_federation_metrics(prometheus, 10, ROUNDS)
    end = time.time()
    check_dashboard(prometheus, {"run": ".*", "experiment": ".*"}, start, end)
    assert render(prometheus, DASHBOARD, tmp_path / "dashboard.png", start, end).stat().st_size > 10_000
    (exp,) = (tmp_path / "results").iterdir()
    expositions["orchestrator"] = (exp / "metrics.prom").read_text()
    for name, text in expositions.items():
        assert f"\nfedimdb_{'repeats' if name == 'orchestrator' else name.split('-')[0]}_" in text, (name, text)
        promtool_accepts(text)
    run_dir = exp / "repeat-0"
    verify_run(run_dir)
    clients = read_csv(run_dir / "clients.csv")
    failed = sorted((r["round"], int(r["partition_id"])) for r in clients if r["status"] == ClientStatus.FAILED)
    assert failed == [("2", k) for k in KILLED], failed
    trained = {(int(r["round"]), int(r["partition_id"])): r["status"] for r in clients if r["num_examples"]}
    assert all(trained.get((ROUNDS, k)) == ClientStatus.OK for k in KILLED), (
        f"the restarted clients rejoined: {trained}"
    )
    rounds = {int(r["round"]): r for r in read_csv(run_dir / "rounds.csv")}
    assert sorted(rounds) == list(range(1, ROUNDS + 1)) and rounds[2]["clients_failed"] == str(len(KILLED))
    timeline = {k: sorted(r for r, p in trained if p == k) for k in KILLED}
    seconds = [round(float(rounds[r]["round_seconds"]), 1) for r in sorted(rounds)]
    assert fired(prometheus, "FedimdbClientSilent") == {str(k) for k in KILLED}, (
        f"rounds trained by the killed clients: {timeline}; round seconds: {seconds}; the expression held for "
        f"{held(prometheus, 'FedimdbClientSilent')}"
    )
