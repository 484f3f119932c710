"""A real Flower deployment as local processes: one SuperLink, N SuperNodes, gRPC on loopback.

The SuperNodes reach the SuperLink's Fleet API over gRPC (grpc-rere); ``flwr`` reaches
its Control API over HTTP. Every process runs in its own session so that stopping it
also stops the ``flower-superexec``, ServerApp and ClientApp processes it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from fedimdb.data import client_dir_name
from fedimdb.deploy.processes import superlink_argv, supernode_argv

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts connections on ``port``; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listened on {LOOPBACK}:{port} within {timeout:.0f} s")


class LocalFederation:
    """Context manager: SuperLink + ``num_clients`` SuperNodes, each on its own shard."""

    def __init__(self, shards_dir: Path, num_clients: int, workdir: Path, env: Mapping[str, str]) -> None:
        self.shards_dir = Path(shards_dir).resolve()
        self.num_clients = num_clients
        self.workdir = Path(workdir)
        self.env = {**os.environ, **env}
        self.fleet_port = free_port()
        self.control_port = free_port()
        self.superlink: subprocess.Popen | None = None
        self.supernodes: list[subprocess.Popen] = []
        self._logs: list[IO[bytes]] = []

    @property
    def control_address(self) -> str:
        return f"{LOOPBACK}:{self.control_port}"

    @property
    def fleet_address(self) -> str:
        return f"{LOOPBACK}:{self.fleet_port}"

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.workdir / log_name, "wb")  # noqa: SIM115 - open while the process runs; closed in stop()
        self._logs.append(log)
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def __enter__(self) -> LocalFederation:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.superlink = self._spawn(
                superlink_argv(self.fleet_address, LOOPBACK, self.control_port), "superlink.log"
            )
            wait_for_port(self.control_port, 60, self.superlink)
            wait_for_port(self.fleet_port, 60, self.superlink)
            for pid in range(self.num_clients):
                argv = supernode_argv(self.fleet_address, pid, str(self.shards_dir / client_dir_name(pid)), free_port())
                self.supernodes.append(self._spawn(argv, f"supernode-{pid}.log"))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise if the SuperLink or a SuperNode exited while a run is going on."""
        for proc in [self.superlink, *self.supernodes]:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(proc.args[:1])} (pid {proc.pid}) exited with code {proc.returncode}; "
                    f"see the logs in {self.workdir}"
                )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group, then SIGKILL whatever is left of them after ``grace`` s."""
        procs = [p for p in [*self.supernodes, self.superlink] if p is not None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            deadline = time.monotonic() + grace
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for log in self._logs:
            log.close()
        self._logs.clear()
