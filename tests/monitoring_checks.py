"""A real Prometheus for the monitoring tests (the Debian binary), and what its data must show.

The metric names and labels below are written out from the monitoring issue, not read from
fedimdb/metrics/: a renamed or dropped metric fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.dashboard import panel_queries, query_panel

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "fedimdb.json"
RUN, PARTITION, EXPERIMENT = "run", "partition", "experiment"
SERVER_METRICS = {
    "fedimdb_server_run_info": {RUN, "strategy", "model", "clients", "rounds"},
    "fedimdb_server_run_status": {RUN, "status"},
    "fedimdb_server_round": {RUN},
    "fedimdb_server_round_started_timestamp_seconds": {RUN},
    "fedimdb_server_round_timeout_seconds": {RUN},
    "fedimdb_server_rounds_completed_total": {RUN},
    "fedimdb_server_round_duration_seconds_bucket": {RUN, "le"},
    "fedimdb_server_round_duration_seconds_count": {RUN},
    "fedimdb_server_aggregation_seconds_bucket": {RUN, "le"},
    "fedimdb_server_aggregation_seconds_count": {RUN},
    "fedimdb_server_nodes_online": {RUN},
    "fedimdb_server_clients_sampled": {RUN},
    "fedimdb_server_clients_replied": {RUN},
    "fedimdb_server_clients_failed": {RUN},
    "fedimdb_server_client_last_round": {RUN, PARTITION},
    "fedimdb_server_sent_bytes_total": {RUN},
    "fedimdb_server_received_bytes_total": {RUN},
    "fedimdb_server_central_loss": {RUN},
    "fedimdb_server_central_accuracy": {RUN},
    "fedimdb_server_privacy_epsilon": {RUN},
}
CLIENT_METRICS = {
    name: {PARTITION, RUN}
    for name in (
        "fedimdb_client_samples_trained_total",
        "fedimdb_client_train_seconds_total",
        "fedimdb_client_samples_per_second",
        "fedimdb_client_train_loss",
        "fedimdb_client_eval_loss",
        "fedimdb_client_eval_accuracy",
        "fedimdb_client_update_norm",
        "fedimdb_client_last_round",
        "fedimdb_client_process_resident_memory_bytes",
    )
}
ORCHESTRATOR_METRICS = {
    **{
        name: {EXPERIMENT}
        for name in (
            "fedimdb_repeats_planned",
            "fedimdb_repeats_completed_total",
            "fedimdb_repeats_failed_total",
            "fedimdb_current_repeat",
            "fedimdb_current_round",
            "fedimdb_eta_seconds",
        )
    },
    **{
        name: {EXPERIMENT, "repeat"}
        for name in ("fedimdb_repeat_duration_seconds", "fedimdb_final_accuracy", "fedimdb_final_loss")
    },
}
ALL_METRICS = {**SERVER_METRICS, **CLIENT_METRICS, **ORCHESTRATOR_METRICS}
SCRAPE_LABELS = {"job", "instance", "__name__"}  # added by Prometheus (last_over_time keeps the name)


def eventually(check: Callable[[], None], timeout: float, step: float = 0.5) -> None:
    """Run ``check`` until it stops raising AssertionError; its last failure after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(step)


def require_prometheus() -> None:
    """Skip without the prometheus and promtool binaries; fail instead if FEDIMDB_REQUIRE_PROMETHEUS=1 (CI)."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    if os.environ.get("FEDIMDB_REQUIRE_PROMETHEUS") == "1":
        raise RuntimeError(
            "FEDIMDB_REQUIRE_PROMETHEUS=1 but prometheus/promtool are not on PATH: apt-get install prometheus"
        )
    pytest.skip("no prometheus/promtool binaries (apt-get install prometheus)", allow_module_level=True)


def local_config(metrics_port: int, folder: Path) -> Path:
    """monitoring/prometheus/local.yml scraping ``metrics_port`` every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "local.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    """The prometheus binary on ``config``, listening on ``port``, its data in ``folder``."""

    def __init__(self, config: Path, port: int, folder: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.args = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        self.log = folder / "prometheus.log"

    def __enter__(self) -> Prometheus:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        wait_ready(self.url, 60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"Prometheus at {url} not ready within {timeout:.0f} s")


def query(url: str, expr: str) -> list[dict]:
    """An instant query's result (vector) via the HTTP API."""
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def series(url: str, name: str) -> list[dict[str, str]]:
    """The label sets of ``name``'s series seen in the last hour (stale ones too)."""
    return [s["metric"] for s in query(url, f"last_over_time({name}[1h])")]


def check_federation_metrics(url: str, clients: int, rounds: int) -> None:
    """Every metric has series with exactly its labels; rounds reached; every partition has its series."""
    for name, labels in ALL_METRICS.items():
        found = series(url, name)
        assert found, f"{name}: no samples"
        for metric in found:
            assert set(metric) - SCRAPE_LABELS == labels, f"{name}: labels {sorted(metric)}, expected {sorted(labels)}"
        if PARTITION in labels:
            partitions = {int(m[PARTITION]) for m in found}
            assert partitions == set(range(clients)), f"{name}: partitions {sorted(partitions)}"
    assert _max(url, "fedimdb_server_rounds_completed_total") == rounds
    assert _max(url, "fedimdb_server_round") == rounds
    assert _max(url, "fedimdb_current_round") == rounds
    assert _max(url, "fedimdb_repeats_completed_total") == 1, "the orchestrator's last values were scraped"


def _max(url: str, name: str) -> float:
    (result,) = query(url, f"max(max_over_time({name}[1h]))")
    return float(result["value"][1])


def check_dashboard(url: str, values: dict[str, str], start: float, end: float) -> None:
    """Every expression of the dashboard returns data over the run's time range, as Grafana asks (no dead panel)."""
    queries = panel_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 20, queries
    empty = [f"{q.title}: {q.expr}" for q in queries if not query_panel(url, q, values, start, end)]
    assert not empty, "panels without data:\n" + "\n".join(empty)


PROMETHEUS_TEST_IMAGE = "fedimdb-test/prometheus:debian"
GRAFANA_STANDIN_IMAGE = "fedimdb-test/grafana:stand-in"


def build_monitoring_images(folder: Path) -> dict[str, str]:
    """Images for the monitoring profile without a registry; the Compose variables that select them.

    Prometheus: the host's Debian binary on the base image (it needs only libc). Grafana cannot run
    here: a container that only sleeps stands in for it, so that the profile comes up as written.
    """
    base = os.environ.get("BASE_IMAGE", "fedimdb/python-base:bookworm")
    images = {
        PROMETHEUS_TEST_IMAGE: (
            f'FROM {base}\nCOPY prometheus /bin/prometheus\nENTRYPOINT ["/bin/prometheus"]\n',
            [shutil.which("prometheus")],
        ),
        GRAFANA_STANDIN_IMAGE: (f'FROM {base}\nCMD ["sleep", "infinity"]\n', []),
    }
    for tag, (dockerfile, files) in images.items():
        context = folder / tag.replace("/", "-").replace(":", "-")
        context.mkdir(parents=True)
        (context / "Dockerfile").write_text(dockerfile)
        for f in files:
            shutil.copy(f, context)
        subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True, timeout=600)
    return {"PROMETHEUS_IMAGE": PROMETHEUS_TEST_IMAGE, "GRAFANA_IMAGE": GRAFANA_STANDIN_IMAGE}


def fired(url: str, alertname: str) -> set[str]:
    """Partitions for which ``alertname`` fired in the last hour."""
    expr = f'max_over_time(ALERTS{{alertname="{alertname}",alertstate="firing"}}[1h])'
    return {s["metric"].get(PARTITION, "") for s in query(url, expr)}


def held(url: str, alertname: str) -> set[str]:
    """Partitions for which ``alertname``'s expression (alerts.yml) held in the samples scraped in the last
    hour, at any second: where it did and the alert did not fire, the rule's evaluations missed it."""
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    (rule,) = (r for g in groups for r in g["rules"] if r.get("alert") == alertname)
    return {s["metric"].get(PARTITION, "") for s in query(url, f"max_over_time(({rule['expr']})[1h:1s])")}


class ExpositionWatch:
    """Watches a running orchestrator's ``/metrics``; keeps the last text that holds the ServerApp's and
    the ClientApps' series beside the orchestrator's (the local backend serves all three)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.text = ""

    def __call__(self, proc: subprocess.Popen) -> None:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    text = reply.read().decode()
            except OSError:
                text = ""
            if all(f"\n{prefix}" in text for prefix in EXPOSITION_PREFIXES):
                self.text = text
            time.sleep(1)


EXPOSITION_PREFIXES = ("fedimdb_repeats_", "fedimdb_server_", "fedimdb_client_")


def promtool_accepts(text: str) -> None:
    """``promtool check metrics`` finds nothing to say of a /metrics text (names, suffixes, help, types)."""
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def container_exposition(container: Any, port: int) -> str:
    """A container's own ``/metrics`` text, fetched from inside it (the port is on its networks only)."""
    fetch = f"import urllib.request as u, sys; sys.stdout.write(u.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    code, out = container.exec_run(["python", "-c", fetch])
    assert code == 0, out.decode(errors="replace")
    return out.decode()


def check_exposition(text: str) -> None:
    """promtool accepts the text, and every metric fedimdb declares is on a dashboard panel."""
    promtool_accepts(text)
