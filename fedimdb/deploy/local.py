"""The local backend: a real Flower deployment as local processes, gRPC on loopback.

:class:`LocalFederation` is one SuperLink and N SuperNodes; the SuperNodes reach the
SuperLink's Fleet API over gRPC (grpc-rere), ``flwr`` reaches its Control API over HTTP.
Every process runs in its own session so that stopping it also stops the
``flower-superexec`` and ClientApp processes a SuperNode started. The SuperLink's own
``flower-superexec`` and the ServerApp it starts are not in its session: Flower starts that
SuperExec in a session of its own, so the federation records it as one more process group.
:class:`LocalStack` runs one repeat on a fresh federation (the :class:`~fedimdb.deploy.backend.Stack` interface).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from fedimdb.artifacts import LOGS_DIR
from fedimdb.config import RunConfig
from fedimdb.data import SERVER_DIR, client_dir_name
from fedimdb.deploy import flwr_cli, forkserver
from fedimdb.deploy.backend import RoundCallback, Stack, StackError
from fedimdb.deploy.credentials import Credentials, NodeCredentials, make_credentials, renew_node_key
from fedimdb.deploy.proc import children, runs_one_of, stop_groups
from fedimdb.deploy.processes import await_superlink, simulation_superlink_argv, superlink_argv, supernode_argv
from fedimdb.deploy.topology import FLOWER_POLL_VAR, LOCAL_CONNECTION, LOOPBACK
from fedimdb.metrics.exporter import MULTIPROC_VAR

PROCESS_GROUPS = "process-groups"  # key of a stack handle

MAX_NODE_RESTARTS = 5  # per SuperNode and attempt
RESTART_BACKOFF = 2.0  # seconds before a SuperNode's first restart, doubling for each further one ...
RESTART_BACKOFF_MAX = 20.0  # ... up to this: a node that keeps crashing is not restarted in a tight loop
FLOWER_COMMANDS = ("flwr", "flower-superlink", "flower-supernode")
FORKSERVER_LOG = "forkserver.log"  # the SuperNodes' fork server's, beside theirs
SUPEREXEC = b"flower-superexec"  # in the command line of the SuperLink's child that starts the ServerApp


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class LocalFederation:
    """Context manager: SuperLink + ``num_clients`` SuperNodes, each on its own shard.

    Inside the block, the ``flwr`` CLI (``env``'s FLWR_HOME) reaches the SuperLink as :data:`LOCAL_CONNECTION`.
    With ``credentials``, every API is TLS and each SuperNode's key is registered before it starts.
    With ``database``, the SuperLink keeps its state in that file (:meth:`restart_superlink`).
    With ``simulation``, the SuperLink runs each run on Flower's Simulation Engine and no SuperNode starts.
    """

    def __init__(
        self,
        shards_dir: Path,
        num_clients: int,
        workdir: Path,
        env: Mapping[str, str],
        warm_clients: bool = True,
        credentials: Credentials | None = None,
        log: Callable[[str], None] = lambda _: None,
        on_restart: Callable[[], None] = lambda: None,
        database: Path | None = None,
        simulation: bool = False,
    ) -> None:
        self.database = database
        self.simulation = simulation
        self.shards_dir = Path(shards_dir).resolve()
        self.log = log
        self.on_restart = on_restart  # called once a SuperNode was started again (a new process group)
        self.num_clients = num_clients
        self.warm_clients = warm_clients
        self.credentials = credentials
        self.workdir = Path(workdir)
        self.env = {**os.environ, **env}
        self.fleet_port = free_port()
        self.control_port = free_port()
        self.superlink: subprocess.Popen | None = None
        self.superexec: int | None = None  # pid of the SuperLink's SuperExec, which leads its own session
        self.supernodes: list[subprocess.Popen] = []
        self.forkserver: subprocess.Popen | None = None  # with warm clients: the one fork server of the SuperNodes
        self._node_env = self.env  # the SuperNodes' environment: with warm clients, the fork server's shims first
        self.restarts = [0] * num_clients
        self.node_ids: dict[int, int] = {}  # partition -> the node id its key is registered as (authentication on)
        self._restart_at: list[float | None] = [None] * num_clients  # when an exited SuperNode is started again
        self._logs: list[IO[bytes]] = []

    @property
    def control_address(self) -> str:
        return f"{LOOPBACK}:{self.control_port}"

    @property
    def fleet_address(self) -> str:
        return f"{LOOPBACK}:{self.fleet_port}"

    def _spawn(
        self, args: list[str], log_name: str, mode: str = "wb", env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        log = self._open_log(log_name, mode)
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env or self.env, start_new_session=True)

    def _open_log(self, name: str, mode: str = "wb") -> IO[bytes]:
        log = open(self.workdir / name, mode)  # noqa: SIM115 - open while the process runs; closed in stop()
        self._logs.append(log)
        return log

    def __enter__(self) -> LocalFederation:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            registered = self._start_superlink()
            server = self.credentials.server if self.credentials else None
            if self.warm_clients and not self.simulation:
                self._start_forkserver()
            for pid in range(0 if self.simulation else self.num_clients):
                if server is not None:
                    self.node_ids[pid] = registered[server.node_public_key(pid)]
                self.supernodes.append(self._spawn(self._node_argv(pid), f"supernode-{pid}.log", env=self._node_env))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_superlink(self) -> dict[Path, int]:
        """The SuperLink, up and answering; the node id each registered key got (see :func:`await_superlink`)."""
        server = self.credentials.server if self.credentials else None
        ports: tuple[int, ...] = (self.control_port,)  # a simulating SuperLink has no Fleet API
        if self.simulation:
            argv = simulation_superlink_argv(LOOPBACK, self.control_port)
        else:
            argv = superlink_argv(self.fleet_address, LOOPBACK, self.control_port, server, self.database)
            ports += (self.fleet_port,)
        self.superlink = self._spawn(argv, "superlink.log", mode="ab")
        registered = await_superlink(self.superlink, ports, self.env, server)
        self.superexec = self._superexec_of(self.superlink)
        return registered

    def _start_forkserver(self) -> None:
        """The one fork server of every SuperNode here (a session of its own), and the SuperNodes' environment."""
        self.forkserver, shims = forkserver.start_server(
            forkserver.NODES_FLAG, self.env, self._open_log(FORKSERVER_LOG), session=True
        )
        if not shims:
            raise StackError(f"the SuperNodes' fork server did not start; see {self.workdir / FORKSERVER_LOG}")
        self._node_env = {**self.env, **shims}

    def _superexec_of(self, link: subprocess.Popen) -> int:
        """The pid of the ``flower-superexec`` the SuperLink ``link`` started (in a session of its own).

        Flower starts it while the SuperLink starts up, before its Control API answers.
        """
        found = children(link.pid, SUPEREXEC)
        if len(found) != 1:
            raise StackError(
                f"the SuperLink (pid {link.pid}) runs {len(found)} flower-superexec, not 1; see {self.workdir}"
            )
        return found[0]

    @property
    def groups(self) -> list[int]:
        """The process groups of the federation: the SuperLink, its SuperExec, every SuperNode and their fork server."""
        procs = [self.superlink, *self.supernodes, self.forkserver]
        return [p.pid for p in procs if p is not None] + ([self.superexec] if self.superexec is not None else [])

    def restart_superlink(self) -> None:
        """SIGKILL the SuperLink with the SuperExec and ServerApp it started, as when a server container
        dies, and start it again on the same ports and ``database``: its registered keys and node ids
        are kept there, so the SuperNodes reconnect as the nodes they were.
        """
        link = self.superlink
        if link is None or self.database is None:
            raise StackError("restart_superlink() needs a running SuperLink with a database")
        for group in (link.pid, self.superexec):
            if group is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
        link.wait()
        self._start_superlink()

    def _node_argv(self, pid: int, key: NodeCredentials | None = None) -> list[str]:
        """SuperNode ``pid``'s command line, signing in with ``key`` (default: its own credentials)."""
        creds = self.credentials
        key = key or (creds.node(pid) if creds else None)
        argv = supernode_argv(self.fleet_address, pid, str(self.shards_dir / client_dir_name(pid)), free_port(), key)
        return argv

    def check_alive(self) -> None:
        """Raise if the SuperLink exited; replace a SuperNode that exited, as a site restarts a crashed node.

        With SuperNode authentication the lost node is unregistered at once (its pending messages
        fail now, not when its heartbeats lapse ~60 s later) and its replacement signs in with a new
        key, registered first: a new node for the same partition, sampled from the next round on.
        Without, the replacement registers itself as a new node and the lost one lapses. Restarts
        back off (:data:`RESTART_BACKOFF` s, doubling up to :data:`RESTART_BACKOFF_MAX`); one that
        exits more than :data:`MAX_NODE_RESTARTS` times fails the attempt.
        """
        link = self.superlink
        if link is not None and link.poll() is not None:
            raise StackError(f"the SuperLink (pid {link.pid}) exited with code {link.returncode}; see {self.workdir}")
        for k, proc in enumerate(self.supernodes):
            if proc.poll() is None:
                continue
            if self.restarts[k] >= MAX_NODE_RESTARTS:
                raise StackError(
                    f"SuperNode {k} exited {self.restarts[k] + 1} times (last code {proc.returncode}); "
                    f"see {self.workdir / f'supernode-{k}.log'}"
                )
            restart_at = self._restart_at[k]
            if restart_at is None:
                self._unregister(k)
                backoff = min(RESTART_BACKOFF * 2 ** self.restarts[k], RESTART_BACKOFF_MAX)
                restart_at = self._restart_at[k] = time.monotonic() + backoff
            if time.monotonic() >= restart_at:
                self._restart(k, proc)

    def _unregister(self, k: int) -> None:
        """Tell the SuperLink that SuperNode ``k``'s node is gone (authentication on: its node id is known)."""
        if k in self.node_ids:
            flwr_cli.unregister_node(LOCAL_CONNECTION, self.node_ids.pop(k), self.env)

    def _restart(self, k: int, exited: subprocess.Popen) -> None:
        self.restarts[k] += 1
        self._restart_at[k] = None
        key, how = None, ""
        if self.credentials is not None:
            key = renew_node_key(self.credentials, k, self.restarts[k])
            self.node_ids[k] = flwr_cli.register_nodes(LOCAL_CONNECTION, [key.public_key], self.env)[key.public_key]
            how = f" as node {self.node_ids[k]} (a new key; the lost node was unregistered)"
        self.supernodes[k] = self._spawn(self._node_argv(k, key), f"supernode-{k}.log", mode="ab", env=self._node_env)
        self.on_restart()
        self.log(
            f"SuperNode {k} exited with code {exited.returncode}; restarted it "
            f"({self.restarts[k]} of {MAX_NODE_RESTARTS} restarts){how}"
        )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group, then SIGKILL whatever is left of them after ``grace`` s."""
        procs = {p.pid: p for p in [*self.supernodes, self.superlink, self.forkserver] if p is not None}

        def running(pid: int) -> bool:  # poll() reaps our children; the SuperExec is the SuperLink's
            return procs[pid].poll() is None if pid in procs else runs_one_of(pid, (SUPEREXEC,))

        stop_groups(self.groups, running, grace)
        for log in self._logs:
            log.close()
        self._logs.clear()


def missing_commands() -> list[str]:
    """Flower's commands that the local backend needs and PATH lacks."""
    return [c for c in FLOWER_COMMANDS if shutil.which(c) is None]


def process_env(cfg: RunConfig, flwr_home: Path, superexec_poll_interval: float = 1.0) -> dict[str, str]:
    """Environment of every local Flower process: own FLWR_HOME, no telemetry, threads shared fairly."""
    threads = cfg.torch_threads or max(1, (os.cpu_count() or 1) // cfg.num_clients)
    return {
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        FLOWER_POLL_VAR: str(superexec_poll_interval),
    }


class LocalStack(Stack):
    """One repeat on a fresh LocalFederation; the ServerApp writes straight into ``job.run_dir``."""

    federation: LocalFederation | None = None

    def up(self) -> None:
        """A private FLWR_HOME, the SuperLink and one SuperNode per client; logs into run_dir/logs."""
        job = self.job
        fed = self._start(simulation=False)
        how = "TLS, registered keys" if fed.credentials else "plaintext"
        self.log(f"{job.run.num_clients} SuperNodes connect over gRPC ({how}) to the SuperLink at {fed.fleet_address}")

    def _start(self, simulation: bool, env: Mapping[str, str] | None = None) -> LocalFederation:
        """The federation in a private FLWR_HOME (TLS and SuperNode keys if ``tls-auth``, unless simulating),
        its processes' environment with ``env`` on top."""
        job = self.job
        self._flwr_home = tempfile.TemporaryDirectory(prefix="fedimdb-flwr-")
        self.env = process_env(job.run, Path(self._flwr_home.name), job.nodes.superexec_poll_interval)
        self.env.update(env or {})
        if job.metrics_dir is not None:  # the ServerApp and ClientApps record for the orchestrator's /metrics
            self.env[MULTIPROC_VAR] = str(job.metrics_dir)
        home = Path(self._flwr_home.name)
        secure = job.nodes.tls_auth and not simulation
        creds = make_credentials(home / "credentials", job.run.num_clients) if secure else None
        self.federation = LocalFederation(
            job.shards,
            job.run.num_clients,
            job.run_dir / LOGS_DIR,
            self.env,
            job.nodes.warm_clients,
            creds,
            self.log,
            on_restart=lambda: self.on_handle(self.handle()),
            simulation=simulation,
        )
        self.federation.__enter__()
        return self.federation

    def run(self, on_round: RoundCallback) -> None:
        """``flwr run`` against the local SuperLink, followed to its end."""
        self._follow(on_round, {})

    def _follow(
        self,
        on_round: RoundCallback,
        run_config: Mapping[str, Any],
        federation_config: Mapping[str, float] | None = None,
    ) -> None:
        """Submit the run with the job's settings and ``run_config`` on top; follow it to its end."""
        job, fed = self.job, self.federation
        assert fed is not None, "run() outside the stack's with-block"
        flwr_cli.run_to_completion(
            LOCAL_CONNECTION,
            {
                **job.run.as_dict(),
                "held-out-dir": str((job.shards / SERVER_DIR).resolve()),
                "output-dir": str(job.run_dir.resolve()),
                **run_config,
            },
            self.env,
            log=self.log,
            check=fed.check_alive,
            on_round=on_round,
            app_dir=flwr_cli.app_folder(job.nodes.app_dir),
            federation_config=federation_config,
        )

    def collect(self) -> None:
        """Nothing to move: the ServerApp ran on this filesystem and wrote into ``job.run_dir``."""

    def handle(self) -> dict[str, Any]:
        """The process groups of the federation (:attr:`LocalFederation.groups`)."""
        return {PROCESS_GROUPS: self.federation.groups if self.federation else []}

    def down(self) -> None:
        """Stop every process group; the logs stay in run_dir/logs."""
        if self.federation is not None:
            self.federation.stop()
            self.federation = None
            self._flwr_home.cleanup()


def _runs_flower(pid: int) -> bool:
    return runs_one_of(pid, (b"flower-", b"fedimdb"))  # not a process that reused a dead one's pid


def stop_leftover(handle: Mapping[str, Any], run_dir: Path, grace: float = 10.0) -> str:
    """SIGTERM, then SIGKILL, the process groups a killed orchestrator left running.

    Its ServerApp wrote ``run_dir`` on this host: what it archived is there already.
    """
    groups = [g for g in handle.get(PROCESS_GROUPS, []) if _runs_flower(g)]
    stop_groups(groups, _runs_flower, grace)
    return f"stopped the {len(groups)} process groups it left running" if groups else "nothing of it was still running"
