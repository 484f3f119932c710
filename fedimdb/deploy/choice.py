"""Which deployment an experiment runs on: a Compose stack, local processes (also when Docker cannot run), or
Flower's Simulation Engine."""

from __future__ import annotations

import functools
from pathlib import Path

from fedimdb.config import DOCKER_BACKEND, LOCAL_BACKEND, SIMULATION_BACKEND, ConfigError
from fedimdb.deploy import local, simulation
from fedimdb.deploy.backend import Backend, Log


def choose_backend(requested: str, compose_file: Path, log: Log) -> Backend:
    """docker, local or simulation; ``auto`` falls back to local (with a notice) when Docker cannot run."""
    if requested in (LOCAL_BACKEND, SIMULATION_BACKEND):
        missing = local.missing_commands()
        if missing:
            raise ConfigError(
                f"backend {requested} needs {', '.join(missing)} on PATH; install the project: pip install -e ."
            )
        stack: type[local.LocalStack] = local.LocalStack
        if requested == SIMULATION_BACKEND:
            if (problem := simulation.missing_ray()) is not None:
                raise ConfigError(problem)
            stack = simulation.SimulationStack
        make = functools.partial(stack, log=log)
        return Backend(requested, make, local.stop_leftover, process_metrics=True, continues=True)
    from fedimdb.deploy import docker_backend  # the Docker SDK loads only when Docker may be used

    problem = docker_backend.docker_problem(compose_file)
    if problem is None:
        compose = functools.partial(docker_backend.DockerStack, log=log, compose_file=compose_file)
        return Backend(DOCKER_BACKEND, compose, docker_backend.stop_leftover, continues=True)
    if requested == DOCKER_BACKEND:
        raise ConfigError(f"--backend docker: {problem}")
    log(f"notice: backend auto falls back to local processes: {problem}")
    return choose_backend(LOCAL_BACKEND, compose_file, log)
