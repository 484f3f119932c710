"""``orchestrate.py --monitoring``: one Prometheus and Grafana for a whole experiment on Compose.

Every repeat is a Compose project of its own, with its own network. The monitoring services of
docker-compose.yml (its ``monitoring`` profile) run instead as one project,
:data:`MONITORING_PROJECT`, started once and left up; each repeat's server and clients also join
that project's network (:func:`fedimdb.deploy.compose.build_override`), under the names
monitoring/prometheus/prometheus.yml scrapes. Repeats run one after another, so the names always
mean the repeat in progress; the ``run`` label tells their series apart.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from fedimdb.deploy.backend import StackError

MONITORING_PROJECT = "fedimdb-monitoring"
MONITORING_NETWORK = f"{MONITORING_PROJECT}_federation"  # Compose names it <project>_<network>
MONITORING_PROFILE = "monitoring"
MONITORING_SERVICES = ("prometheus", "grafana")
STOP_COMMAND = f"docker compose -p {MONITORING_PROJECT} --profile {MONITORING_PROFILE} down"
CLIENTS_ALIAS = "fedimdb-clients"  # every client container's name on the network (docker-compose.yml, prometheus.yml)


def ensure_up(compose_file: Path, env: Mapping[str, str]) -> None:
    """Start Prometheus and Grafana as :data:`MONITORING_PROJECT` unless they run already."""
    cmd = [
        "docker",
        "compose",
        "-p",
        MONITORING_PROJECT,
        "-f",
        str(compose_file),
        "--profile",
        MONITORING_PROFILE,
        "up",
        "--detach",
        *MONITORING_SERVICES,
    ]
    done = subprocess.run(cmd, cwd=compose_file.parent, env=dict(env), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise StackError(
            f"--monitoring: starting Prometheus and Grafana failed ({(done.stdout + done.stderr).strip()[-1500:]}); "
            "check PROMETHEUS_IMAGE and GRAFANA_IMAGE in .env (the images must be pullable or built here), "
            "or leave --monitoring out"
        )
