"""Read a run's artifacts out of the Compose stack's volume with the Docker SDK.

The runner container mounts the ``artifacts`` volume; ``get_archive`` works on it while the
runner runs (to follow the run's progress in its run.json) and after it exited (to collect the
results), so nothing has to stay running to collect them.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker

from fedimdb.artifacts import RUN_FILE
from fedimdb.deploy.topology import ARTIFACTS_MOUNT
from fedimdb.run_record import RunRecord

RUNNER_SERVICE = "runner"


def service_containers(client: Any, project: str, service: str) -> list[Any]:
    """All containers (running or not) of one service of a Compose project."""
    labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
    return client.containers.list(all=True, filters={"label": labels})


@contextmanager
def _archive(container: Any, path: str, spool_dir: Path | None = None) -> Iterator[tarfile.TarFile]:
    """``path`` in the container as an open tar archive, spooled through a temporary file."""
    stream, _ = container.get_archive(path)
    with tempfile.TemporaryFile(dir=spool_dir) as buf:
        for chunk in stream:
            buf.write(chunk)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            yield tar


def pull_artifacts(project: str, run_name: str, dest: Path, client: Any | None = None) -> Path:
    """Copy ``/artifacts/<run_name>`` from the project's runner container to ``dest/<run_name>``.

    ``dest/<run_name>`` must not exist yet: collected results are never overwritten.
    """
    client = client or docker.from_env()
    target = Path(dest) / run_name
    if target.exists():
        raise FileExistsError(f"{target} already exists; results are never overwritten")
    runners = service_containers(client, project, RUNNER_SERVICE)
    if not runners:
        raise LookupError(f"Compose project {project!r} has no runner container")
    Path(dest).mkdir(parents=True, exist_ok=True)
    with _archive(runners[0], f"{ARTIFACTS_MOUNT}/{run_name}", spool_dir=Path(dest)) as tar:
        tar.extractall(dest, filter="data")
    return target


def pull_run_dir(project: str, run_dir: Path, client: Any | None = None) -> Path:
    """Copy the project's ``/artifacts/<run_dir.name>`` to ``run_dir`` (absent yet), through a hidden folder
    beside it: ``run_dir`` appears whole or not at all."""
    with tempfile.TemporaryDirectory(dir=run_dir.parent, prefix=f".{run_dir.name}.") as spool:
        pulled = pull_artifacts(project, run_dir.name, Path(spool), client)
        shutil.move(str(pulled), run_dir)
    return run_dir


def keep_archived(project: str, run_dir: Path, client: Any | None = None) -> str:
    """What a run that did not finish archived in the volume, pulled to ``run_dir`` so that another attempt can
    continue it; says what it kept. The project's containers must be stopped (nothing writing)."""
    if run_dir.exists():
        return f"{run_dir.name} is there already"
    try:
        pull_run_dir(project, run_dir, client)
    except (docker.errors.NotFound, LookupError):
        return "it archived nothing"
    return f"kept what it archived in {run_dir.name}"


def read_run_file(container: Any, run_name: str) -> RunRecord | None:
    """The run's run.json as it stands now in the artifacts volume; None before it is there."""
    try:
        with _archive(container, f"{ARTIFACTS_MOUNT}/{run_name}/{RUN_FILE}") as tar:
            member = tar.extractfile(RUN_FILE)
            return RunRecord.from_json(json.loads(member.read())) if member is not None else None
    except (docker.errors.NotFound, ValueError):
        return None
