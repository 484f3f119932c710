"""The Docker backend: one run as a Compose stack (the :class:`~fedimdb.deploy.backend.Stack` interface).

Every attempt gets its own Compose project (so its own network and ``artifacts`` volume) and an
override file with its settings. Progress is read from the run's run.json in the volume, the
artifacts are pulled out of the volume with the Docker SDK, and the stack is torn down with its
volumes afterwards unless asked to stay up for inspection. A Docker daemon slow to answer (a
loaded machine) is waited for, up to :data:`DOCKER_PATIENCE` seconds of silence.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import requests
import yaml

from fedimdb.artifacts import LOGS_DIR
from fedimdb.deploy.backend import Log, RoundCallback, Stack, StackError, StackJob
from fedimdb.deploy.compose import COMPOSE_FILE, CREDENTIALS_DIR_VAR, SHARDS_DIR_VAR, build_override
from fedimdb.deploy.docker_artifacts import (
    RUNNER_SERVICE,
    keep_archived,
    pull_run_dir,
    read_run_file,
    service_containers,
)
from fedimdb.deploy.flwr_cli import RoundProgress
from fedimdb.deploy.monitoring import MONITORING_PROJECT, STOP_COMMAND, ensure_up
from fedimdb.deploy.topology import (
    CLIENT_METRICS_VAR,
    CONTINUE_MOUNT,
    SERVER_HOST,
    SERVER_METRICS_VAR,
    SUPEREXEC_POLL_VAR,
    TLS_AUTH_VAR,
    WARM_CLIENTS_VAR,
)
from fedimdb.run_record import RunRecord
from fedimdb.waiting import patiently

COMPOSE_LOG = "compose.log"  # in the run folder's logs/
COMPOSE_PROJECT = "compose-project"  # key of a stack handle
POLL_SECONDS = 3.0
DOCKER_PATIENCE = 600.0  # seconds the Docker daemon may leave the run's status checks unanswered
UNANSWERED = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)  # the Docker SDK's "no answer"


class ComposeRunError(StackError):
    """The stack did not bring the run to a verified end."""


DOCKER_FAILURES = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    subprocess.SubprocessError,
    LookupError,  # a container the stack should have is not there
)
"""What the Docker SDK, its daemon and ``docker compose`` raise when a stack misbehaves."""


@contextlib.contextmanager
def stack_failures(what: str) -> Iterator[None]:
    """Turn :data:`DOCKER_FAILURES` into ComposeRunError (another attempt on a fresh stack may do better)."""
    try:
        yield
    except DOCKER_FAILURES as exc:
        raise ComposeRunError(f"{what}: {type(exc).__name__}: {exc}") from exc


def docker_problem(compose_file: Path = COMPOSE_FILE) -> str | None:
    """Why the Docker backend cannot run here, or None when it can."""
    if not compose_file.is_file():
        return f"compose file {compose_file} not found; run from a fedimdb checkout or pass --compose-file"
    try:
        docker.from_env(timeout=10).ping()
    except Exception as exc:  # any failure means: no usable daemon
        return f"no Docker daemon answers ({type(exc).__name__}: {exc}); start dockerd or use --backend local"
    try:
        subprocess.run(["docker", "compose", "version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "`docker compose` (Compose v2) is not installed; install it or use --backend local"
    return None


class DockerStack(Stack):
    """One repeat as Compose project ``job.name``: server, N client containers, runner."""

    def __init__(self, job: StackJob, log: Log, compose_file: Path = COMPOSE_FILE) -> None:
        super().__init__(job, log)
        self.compose_file = compose_file
        self.work = job.run_dir.parent / f".{job.run_dir.name}.compose"
        self.files = [compose_file, self.work / "override.yml"]
        self.env = {
            **os.environ,
            SHARDS_DIR_VAR: str(job.shards.resolve()),
            CREDENTIALS_DIR_VAR: str((self.work / "credentials").resolve()),  # fresh each attempt
            TLS_AUTH_VAR: str(job.nodes.tls_auth).lower(),
            SERVER_METRICS_VAR: str(job.nodes.server_metrics_port),
            CLIENT_METRICS_VAR: str(job.nodes.client_metrics_port),
            WARM_CLIENTS_VAR: str(job.nodes.warm_clients).lower(),
            SUPEREXEC_POLL_VAR: str(job.nodes.superexec_poll_interval),
        }
        with stack_failures("connecting to the Docker daemon"):
            self.client = docker.from_env()
        self._is_up = False

    def _compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "-p", self.job.name]
        for f in self.files:
            cmd += ["-f", str(f)]
        return subprocess.run(
            [*cmd, *args], cwd=self.compose_file.parent, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def up(self) -> None:
        """Write the override, then ``up --detach --build``: the one-shot prepare exiting must not end it."""
        job = self.job
        run_settings = {k: v for k, v in job.run.as_dict().items() if k not in ("held-out-dir", "output-dir")}
        data_settings = {k: v for k, v in job.data.as_dict().items() if k != "shards-dir"}
        monitoring = job.nodes.monitoring
        app_dir = Path(job.nodes.app_dir).expanduser() if job.nodes.app_dir else None
        continued = Path(job.run.continue_from) if job.run.continue_from else None
        if continued:  # the failed attempt's folder on this host, as the server container sees it
            run_settings["continue-from"] = f"{CONTINUE_MOUNT}/{continued.name}"
        override = build_override(
            job.run.num_clients,
            run_settings,
            data_settings,
            job.run_dir.name,
            monitoring=monitoring,
            app_dir=app_dir,
            continue_from=continued,
        )
        if monitoring:
            with stack_failures("starting Prometheus and Grafana"):
                ensure_up(self.compose_file, self.env)
            self.log(
                f"monitoring: Prometheus and Grafana up as Compose project {MONITORING_PROJECT}, left up after "
                f"the experiment (ports PROMETHEUS_PORT, GRAFANA_PORT in .env); stop with: {STOP_COMMAND}"
            )
        self.work.mkdir(parents=True, exist_ok=True)
        self.files[1].write_text(yaml.safe_dump(override))
        self.log(f"docker compose project {job.name}: {job.run.num_clients} client containers")
        self._is_up = True
        with stack_failures("docker compose up"):
            up = self._compose("up", "--detach", "--build", timeout=3600)
        (self.work / "compose-up.log").write_text(up.stdout + up.stderr)
        if up.returncode != 0:
            raise ComposeRunError(
                f"docker compose up exited {up.returncode}: {(up.stdout + up.stderr).strip()[-2000:]}"
            )

    def _runner(self) -> Any:
        runners = service_containers(self.client, self.job.name, RUNNER_SERVICE)
        if len(runners) != 1:
            raise ComposeRunError(f"expected one runner container in project {self.job.name}, found {len(runners)}")
        return runners[0]

    def _status(self, runner: Any) -> RunRecord | None:
        """Refresh the runner's state; the run's run.json as it stands (None before it is written).

        A server container that exited (crashed, killed) ends the attempt at once: the runner would
        otherwise wait out the SuperLink's patience.
        """
        runner.reload()
        for server in service_containers(self.client, self.job.name, SERVER_HOST):
            if server.status in ("exited", "dead") and runner.status == "running":
                code = server.attrs["State"]["ExitCode"]
                raise ComposeRunError(
                    f"the server container exited with code {code} mid-run; its last lines:\n"
                    f"{server.logs(tail=10).decode(errors='replace')}"
                )
        return read_run_file(runner, self.job.run_dir.name)

    def run(self, on_round: RoundCallback) -> None:
        """Follow the runner (it submits the run and verifies it) until it exits; progress from run.json."""
        with stack_failures("following the run"):
            self._follow(on_round)

    def _follow(self, on_round: RoundCallback) -> None:
        runner, progress = self._runner(), RoundProgress(on_round)
        while True:
            meta = patiently(
                lambda: self._status(runner),
                retry_on=UNANSWERED,
                what="the Docker daemon",
                patience=DOCKER_PATIENCE,
                give_up=ComposeRunError,
                log=self.log,
            )
            progress.update(meta.rounds_completed if meta else 0)
            if runner.status not in ("created", "running", "restarting"):
                break
            time.sleep(POLL_SECONDS)
        code = runner.wait()["StatusCode"]
        if code != 0:
            tail = runner.logs(tail=15).decode(errors="replace")
            raise ComposeRunError(f"the runner exited {code}; its last lines:\n{tail}")

    def collect(self) -> None:
        """Pull the run folder out of the artifacts volume into ``job.run_dir``."""
        with stack_failures("pulling the artifacts out of the volume"):
            pull_run_dir(self.job.name, self.job.run_dir, self.client)

    def handle(self) -> dict[str, Any]:
        """The Compose project's name: ``docker compose -p NAME down`` needs no file."""
        return {COMPOSE_PROJECT: self.job.name}

    def down(self) -> None:
        """Keep the stack's log with the run, and what a failed attempt archived (for the next attempt to
        continue), then remove the stack and its volumes."""
        if not self._is_up:
            return
        self._is_up = False
        with stack_failures("docker compose down"):
            self._take_down()

    def _take_down(self) -> None:
        if not self.job.run_dir.exists():  # not collected: the run failed
            if not self.job.keep_up:
                self._compose("stop", "-t", "10")  # nothing writes into the volume while it is copied
            try:
                kept = keep_archived(self.job.name, self.job.run_dir, self.client)
            except (*DOCKER_FAILURES, OSError) as exc:
                kept = f"what it archived could not be copied out ({type(exc).__name__}: {exc})"
            self.log(f"the failed run: {kept}")
        logs = self._compose("logs", "--no-color", "--timestamps")
        log_dir = self.job.run_dir / LOGS_DIR
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / COMPOSE_LOG).write_text(logs.stdout + logs.stderr)
        if self.job.keep_up:
            self.log(f"stack left up: docker compose -p {self.job.name} -f {self.files[0]} -f {self.files[1]} ps")
            return
        self._compose("down", "-v", "-t", "10")
        shutil.rmtree(self.work, ignore_errors=True)


def stop_leftover(handle: Mapping[str, Any], run_dir: Path) -> str:
    """Stop the Compose project a killed orchestrator left up, keep what its run archived in ``run_dir``
    (to be continued), then remove the project (its containers, network and volumes)."""
    name = handle.get(COMPOSE_PROJECT)
    if not name:
        return "no stack was recorded"
    subprocess.run(["docker", "compose", "-p", name, "stop", "-t", "10"], capture_output=True, timeout=300)
    with stack_failures(f"copying the archived rounds out of project {name}"):
        kept = keep_archived(name, run_dir)
    subprocess.run(["docker", "compose", "-p", name, "down", "-v", "-t", "10"], capture_output=True, timeout=300)
    return f"{kept}; removed its Compose project {name}"
