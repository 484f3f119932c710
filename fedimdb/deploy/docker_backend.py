"""One run as a Compose stack: up, follow the runner, pull the artifacts out of the volume, down.

Every run gets its own Compose project (so its own network and ``artifacts`` volume) and an
override file with its settings; the stack is torn down with its volumes afterwards unless
asked to stay up for inspection.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

import docker
from fedimdb.config import DataConfig, RunConfig
from fedimdb.deploy.compose import COMPOSE_FILE, build_override
from fedimdb.deploy.docker_artifacts import pull_artifacts, service_containers

ROUND_LINE = re.compile(r"^\s*round (\d+)/\d+ done", re.MULTILINE)


class ComposeRunError(RuntimeError):
    """The stack did not bring the run to a verified end."""


def docker_problem(compose_file: Path = COMPOSE_FILE) -> str | None:
    """Why the Docker backend cannot run here, or None when it can."""
    if not compose_file.is_file():
        return f"compose file {compose_file} not found; run from a fedimdb checkout or pass --compose-file"
    try:
        import docker

        docker.from_env(timeout=10).ping()
    except Exception as exc:
        return f"no Docker daemon answers ({type(exc).__name__}: {exc}); start dockerd or use --backend local"
    try:
        subprocess.run(["docker", "compose", "version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "`docker compose` (Compose v2) is not installed; install it or use --backend local"
    return None


def _compose(project: str, files: list[Path], *args: str) -> list[str]:
    cmd = ["docker", "compose", "-p", project]
    for f in files:
        cmd += ["-f", str(f)]
    return [*cmd, *args]


def run_compose(
    cfg: RunConfig,
    data_cfg: DataConfig,
    shards: Path,
    run_dir: Path,
    *,
    project: str,
    keep_up: bool,
    on_round: Callable[[int], None],
    log: Callable[[str], None],
    compose_file: Path = COMPOSE_FILE,
) -> None:
    """Bring the stack up for one run and collect its artifacts into ``run_dir`` (verified by the runner)."""
    work = run_dir.parent / f".{run_dir.name}.compose"
    work.mkdir(parents=True, exist_ok=True)
    run_settings = {k: v for k, v in cfg.as_dict().items() if k not in ("data-dir", "output-dir", "num-clients")}
    data_settings = {k: v for k, v in data_cfg.as_dict().items() if k != "data-dir"}
    override = work / "override.yml"
    override.write_text(yaml.safe_dump(build_override(cfg.num_clients, run_settings, data_settings, run_dir.name)))
    files = [compose_file, override]
    env = {**os.environ, "SHARDS_DIR": str(shards.resolve())}
    client = docker.from_env()
    log(f"docker compose project {project}: {cfg.num_clients} client containers")
    try:
        # Detached, then wait on the runner: the one-shot prepare exiting must not end the stack.
        up = subprocess.run(
            _compose(project, files, "up", "--detach", "--build"),
            cwd=compose_file.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        (work / "compose-up.log").write_text(up.stdout + up.stderr)
        if up.returncode != 0:
            raise ComposeRunError(
                f"docker compose up exited {up.returncode}: {(up.stdout + up.stderr).strip()[-2000:]}"
            )
        runners = service_containers(client, project, "runner")
        if len(runners) != 1:
            raise ComposeRunError(f"expected one runner container in project {project}, found {len(runners)}")
        runner = runners[0]
        for chunk in runner.logs(stream=True, follow=True):
            for match in ROUND_LINE.finditer(chunk.decode(errors="replace")):
                on_round(int(match.group(1)))
        code = runner.wait()["StatusCode"]
        if code != 0:
            tail = runner.logs(tail=15).decode(errors="replace")
            raise ComposeRunError(f"the runner exited {code}; its last lines:\n{tail}")
        pulled = pull_artifacts(project, run_dir.name, work / "pulled", client)
        shutil.move(str(pulled), run_dir)
    finally:
        logs = subprocess.run(
            _compose(project, files, "logs", "--no-color", "--timestamps"),
            cwd=compose_file.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)  # kept with a failed attempt too
        (run_dir / "logs" / "compose.log").write_text(logs.stdout + logs.stderr)
        if not keep_up:
            subprocess.run(
                _compose(project, files, "down", "-v", "-t", "10"),
                cwd=compose_file.parent,
                env=env,
                capture_output=True,
                timeout=300,
            )
        else:
            log(f"stack left up: docker compose -p {project} -f {files[0]} -f {override} ps")
    if not keep_up:
        shutil.rmtree(work, ignore_errors=True)


def compose_project_name(experiment_id: str, repeat: int, attempt: int) -> str:
    """Compose project names: lower-case letters, digits, dashes and underscores."""
    return re.sub(r"[^a-z0-9_-]", "-", f"fedimdb-{experiment_id}-r{repeat}-a{attempt}".lower())
