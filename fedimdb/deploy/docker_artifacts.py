"""Pull a run's artifacts out of the Compose stack's volume with the Docker SDK.

The runner container mounts the ``artifacts`` volume; ``get_archive`` works on it even after
it exited, so nothing has to stay running to collect the results.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any

import docker

ARTIFACTS_MOUNT = "/artifacts"


def service_containers(client: Any, project: str, service: str) -> list[Any]:
    """All containers (running or not) of one service of a Compose project."""
    labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
    return client.containers.list(all=True, filters={"label": labels})


def pull_artifacts(project: str, run_name: str, dest: Path, client: Any | None = None) -> Path:
    """Copy ``/artifacts/<run_name>`` from the project's runner container to ``dest/<run_name>``.

    ``dest/<run_name>`` must not exist yet: collected results are never overwritten.
    """
    client = client or docker.from_env()
    target = Path(dest) / run_name
    if target.exists():
        raise FileExistsError(f"{target} already exists; results are never overwritten")
    runners = service_containers(client, project, "runner")
    if not runners:
        raise LookupError(f"Compose project {project!r} has no runner container")
    stream, _ = runners[0].get_archive(f"{ARTIFACTS_MOUNT}/{run_name}")
    Path(dest).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=dest) as buf:
        for chunk in stream:
            buf.write(chunk)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            tar.extractall(dest, filter="data")
    return target
