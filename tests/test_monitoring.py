"""Monitoring: the shipped Prometheus configuration, alerts and dashboard, and a real Prometheus
scraping a real local federation of 10 clients (the Compose side: tests/test_docker_faults.py)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from fedimdb.config import ExperimentConfig
from fedimdb.deploy.compose import COMPOSE_FILE
from fedimdb.deploy.local import free_port
from fedimdb.deploy.monitoring import CLIENTS_ALIAS
from fedimdb.deploy.topology import SERVER_HOST
from fedimdb.metrics.experiment import LAST_SCRAPE_WAIT, PROMETHEUS_AGENT, ExperimentMetrics, Progress
from fedimdb.training import update_norm
from monitoring.dashboard import panel_queries, render
from tests.conftest import local_run_args, orchestrate
from tests.monitoring_checks import (
    ALL_METRICS,
    DASHBOARD,
    PROMETHEUS_DIR,
    ExpositionWatch,
    Prometheus,
    check_dashboard,
    check_exposition,
    check_federation_metrics,
    eventually,
    local_config,
    require_prometheus,
)

CLIENTS, ROUNDS = 10, 2
SETTINGS = ["max-steps=2", "batch-size=8", "eval-rows=64", "local-eval-rows=32"]


@pytest.mark.parametrize("config", ["prometheus.yml", "local.yml"])
def test_promtool_accepts_the_configurations(config: str) -> None:
    require_prometheus()
    done = subprocess.run(["promtool", "check", "config", config], cwd=PROMETHEUS_DIR, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_and_unit_tests_the_alerts() -> None:
    require_prometheus()
    for cmd in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run(["promtool", *cmd], cwd=PROMETHEUS_DIR, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_scrape_targets_match_the_ports_and_names_of_the_stack() -> None:
    defaults = ExperimentConfig()
    jobs = {j["job_name"]: j for j in yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs["fedimdb-server"]["static_configs"][0]["targets"] == [f"{SERVER_HOST}:{defaults.server_metrics_port}"]
    (dns,) = jobs["fedimdb-clients"]["dns_sd_configs"]
    assert dns["names"] == [CLIENTS_ALIAS] and dns["port"] == defaults.client_metrics_port
    assert jobs["fedimdb-orchestrator"]["static_configs"][0]["targets"] == [
        f"host.docker.internal:{defaults.metrics_port}"
    ]
    local = yaml.safe_load((PROMETHEUS_DIR / "local.yml").read_text())["scrape_configs"]
    assert local[0]["static_configs"][0]["targets"] == [f"localhost:{defaults.metrics_port}"]
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert CLIENTS_ALIAS in compose["services"]["client-0"]["networks"]["federation"]["aliases"]


def test_dashboard_shows_every_metric() -> None:
    exprs = " ".join(q.expr for q in panel_queries(json.loads(DASHBOARD.read_text())))
    bases = {name.removesuffix("_bucket").removesuffix("_count") for name in ALL_METRICS}
    missing = sorted(name for name in bases if name not in exprs)
    assert not missing, f"metrics on no panel: {missing}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_local_federation_in_a_real_prometheus(shards: Path, imdb_dir: Path, tmp_path: Path) -> None:
    """10 local clients, 2 rounds: every metric with its labels, all 10 partitions, every panel has data;
    promtool accepts the /metrics text of the orchestrator, the ServerApp and the ClientApps."""
    require_prometheus()
    port = free_port()
    args = local_run_args(tmp_path / "results", shards, imdb_dir, clients=CLIENTS, rounds=ROUNDS, settings=SETTINGS)
    with Prometheus(local_config(port, tmp_path), free_port(), tmp_path) as prom:
        start = time.time()
        plaintext = {"FEDIMDB_TLS_AUTH": "false"}  # saves registering 10 keys; TLS runs: tests/test_security.py
        exposition = ExpositionWatch(port)
        run = orchestrate(*args, "--metrics-port", str(port), env=plaintext, timeout=800, watch=exposition)
        assert run.returncode == 0, run.stderr[-4000:]
        assert exposition.text, "the orchestrator served its own, the ServerApp's and the ClientApps' metrics"
        check_exposition(exposition.text)
        eventually(lambda: check_federation_metrics(prom.url, CLIENTS, ROUNDS), timeout=60)  # the last scrape
        end = time.time()
        check_dashboard(prom.url, {"run": ".*", "experiment": ".*"}, start, end)
        picture = render(prom.url, DASHBOARD, tmp_path / "dashboard.png", start, end)
    image = imread(picture)  # a PNG that decodes, of a dashboard's size, not one flat colour
    assert image.shape[0] > 400 and image.shape[1] > 400, image.shape
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50, "the panels drew something"


def test_eta_follows_the_pace_of_the_rounds_and_puts_back_a_failed_attempt() -> None:
    clock = Progress(left=2 * 3)  # 2 repeats of 3 rounds
    clock.repeat_started(now=0.0)
    assert clock.round_done(1, now=10.0) == 5 * 10.0
    assert clock.round_done(3, now=30.0) == 3 * 10.0  # two rounds in one report
    clock.repeat_finished()
    clock.repeat_started(now=30.0)
    assert clock.round_done(1, now=50.0) == 2 * (50.0 / 4)
    clock.repeat_failed()  # its round is to be run again
    clock.repeat_started(now=50.0)
    assert clock.round_done(1, now=60.0) == 2 * (60.0 / 5)


def test_the_orchestrator_stays_up_for_the_next_scrape_only_when_scraped(tmp_path: Path) -> None:
    """It waits for Prometheus's next scrape to be sent, not for another reader's (the CI of d796ebb failed
    when a test's reader of /metrics released the wait and Prometheus never saw the final values)."""
    metrics, port = ExperimentMetrics("exp", tmp_path), free_port()
    metrics.serve(port)
    metrics.flush()  # writing metrics.prom is no scrape

    def scrape(agent: str = f"{PROMETHEUS_AGENT}2.42.0") -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"User-Agent": agent})
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.read().decode()

    assert "fedimdb_repeats_planned" in scrape("curl/8.0")
    start = time.monotonic()
    metrics.wait_for_last_scrape()
    assert metrics.served is not None and metrics.served.last is None, "Prometheus has not scraped /metrics ..."
    assert time.monotonic() - start < LAST_SCRAPE_WAIT / 2, "... so nothing is waited for"

    assert "fedimdb_repeats_planned" in scrape()
    threading.Timer(0.5, scrape, args=("curl/8.0",)).start()
    threading.Timer(1.5, scrape).start()
    start = time.monotonic()
    metrics.wait_for_last_scrape()
    assert metrics.served.last is not None and metrics.served.last >= start + 1.5, "up until Prometheus's scrape ..."
    assert time.monotonic() - start < LAST_SCRAPE_WAIT, "... and not until the longest wait"


def test_update_norm_is_the_l2_norm_of_the_float_difference() -> None:
    import torch

    old = {"w": torch.zeros(2, 2), "b": torch.ones(3), "steps": torch.tensor([5])}
    new = {"w": torch.full((2, 2), 1.5), "b": torch.ones(3), "steps": torch.tensor([9])}
    assert update_norm(new, old) == pytest.approx(3.0)  # sqrt(4 × 1.5²); integer buffers do not count
