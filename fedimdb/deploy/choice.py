"""Which deployment an experiment runs on: a Compose stack, or local processes when Docker cannot run."""

from __future__ import annotations

import functools
from pathlib import Path

from fedimdb.config import DOCKER_BACKEND, LOCAL_BACKEND, ConfigError
from fedimdb.deploy import local
from fedimdb.deploy.backend import Backend, Log


def choose_backend(requested: str, compose_file: Path, log: Log) -> Backend:
    """docker or local; ``auto`` falls back to local (with a notice) when Docker cannot run."""
    if requested == LOCAL_BACKEND:
        missing = local.missing_commands()
        if missing:
            raise ConfigError(
                f"backend local needs {', '.join(missing)} on PATH; install the project: pip install -e ."
            )
        local_stack = functools.partial(local.LocalStack, log=log)
        return Backend(LOCAL_BACKEND, local_stack, local.stop_leftover, process_metrics=True, continues=True)
    from fedimdb.deploy import docker_backend  # the Docker SDK loads only when Docker may be used

    problem = docker_backend.docker_problem(compose_file)
    if problem is None:
        stack = functools.partial(docker_backend.DockerStack, log=log, compose_file=compose_file)
        return Backend(DOCKER_BACKEND, stack, docker_backend.stop_leftover, continues=True)
    if requested == DOCKER_BACKEND:
        raise ConfigError(f"--backend docker: {problem}")
    log(f"notice: backend auto falls back to local processes: {problem}")
    return choose_backend(LOCAL_BACKEND, compose_file, log)
