"""How fedimdb starts Flower's long-running processes, in one place for every deployment.

Local processes (fedimdb/deploy/local.py) and containers (docker-compose.yml) both use
these command lines, and both bring a SuperLink up the same way (:func:`await_superlink`: its
ports, the ``flwr`` CLI's connection, every SuperNode key registered). In a container,
``python -m fedimdb.deploy.processes superlink|supernode`` builds them from environment variables
(``FEDIMDB_TLS_AUTH``: TLS and SuperNode authentication with the credentials mounted at
:data:`CREDENTIALS_MOUNT`) and runs them, and ``... healthcheck`` is the server container's
health check. The ports and container paths are declared here and nowhere else in
Python; docker-compose.yml repeats the mount points (it cannot import them).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fedimdb.config import ExperimentConfig, env_name
from fedimdb.deploy import flwr_cli, forkserver
from fedimdb.metrics import exporter
from fedimdb.protocol import NODE_PARTITION_ID, NODE_SHARD_DIR

if TYPE_CHECKING:  # credentials.py imports this module's SERVER_HOST
    from fedimdb.deploy.credentials import NodeCredentials, ServerCredentials

FLEET_PORT = 9092  # gRPC Fleet API: SuperNodes -> SuperLink
CONTROL_PORT = 8000  # HTTP Control (flwr CLI) and Runtime (ServerApp) API
NODE_PORT = 9094  # a SuperNode's own Runtime API for its ClientApps
SERVER_HOST = "server"  # the SuperLink's name on the Compose network (its service name)
SUPERLINK_ADDRESS_VAR = (
    "SUPERLINK_ADDRESS"  # a client container's SuperLink, when not server:FLEET_PORT (a remote site)
)
CLIENT_SHARD_MOUNT = "/data"  # where a client container sees its own shard (read-only)
HELD_OUT_MOUNT = "/held-out"  # where the server container sees the held-out set (read-only)
ARTIFACTS_MOUNT = "/artifacts"  # the artifacts volume, in the server and runner containers
CREDENTIALS_MOUNT = "/credentials"  # a container's own credentials folder (read-only): server/ or client-K/
SHARDS_MOUNT = "/shards"  # the prepare service's view of the host's shards folder
PREPARE_STATUS = Path("/status/prepare")  # the prepare service's outcome, read by the server container
PREPARED = "done"  # PREPARE_STATUS after a preparation that worked; anything else says what failed
CONTAINER_USER = "fedimdb"  # the images' user (docker/install.sh), owner of the mounted credentials
READY_FILE = Path("/tmp/fedimdb-superlink-ready")  # in the server container: SuperLink up, keys registered
LOOPBACK = "127.0.0.1"
LOCAL_CONNECTION = "fedimdb-local"  # the flwr CLI's name for a SuperLink on this host or in this container
TLS_AUTH_VAR = env_name("tls_auth")  # read by the server, client and runner containers
WARM_CLIENTS_VAR = env_name("warm_clients")  # read by the client containers' supernode role
SERVER_METRICS_VAR = env_name("server_metrics_port")  # the server container's exporter
CLIENT_METRICS_VAR = env_name("client_metrics_port")  # each client container's exporter
SUPEREXEC_POLL_VAR = env_name("superexec_poll_interval")  # docker-compose.yml hands it to Flower's SuperExec
FLOWER_POLL_VAR = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's own knob, read by flower-superexec


def runs_one_of(pid: int, words: tuple[bytes, ...]) -> bool:
    """Whether process ``pid`` is alive and its command line holds one of ``words`` (Linux /proc; else False)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(word in cmdline for word in words)


def superlink_argv(fleet_address: str, host: str, port: int, credentials: ServerCredentials | None = None) -> list[str]:
    """A SuperLink with the gRPC (grpc-rere) Fleet API; no per-run dependency installation.

    With ``credentials``: TLS on every API and SuperNode authentication (registered keys only).
    """
    security = ["--insecure"]
    if credentials is not None:
        security = ["--ssl-ca-certfile", str(credentials.ca), "--ssl-certfile", str(credentials.cert),
                    "--ssl-keyfile", str(credentials.key), "--enable-supernode-auth"]  # fmt: skip
    return [
        "flower-superlink",
        *security,
        "--disable-runtime-dependency-installation",
        "--fleet-api-type",
        "grpc-rere",
        "--fleet-api-address",
        fleet_address,
        "--host",
        host,
        "--port",
        str(port),
    ]


def supernode_argv(
    superlink: str, partition_id: int, shard_dir: str, port: int = NODE_PORT, credentials: NodeCredentials | None = None
) -> list[str]:
    """A SuperNode on gRPC (grpc-rere) serving one partition, read from ``shard_dir``.

    With ``credentials``: it trusts their CA and signs in with their private key.
    """
    node_config = f'{NODE_PARTITION_ID}={partition_id} {NODE_SHARD_DIR}="{shard_dir}"'
    security = ["--insecure"]
    if credentials is not None:
        security = ["--root-certificates", str(credentials.ca),
                    "--auth-supernode-private-key", str(credentials.key)]  # fmt: skip
    return [
        "flower-supernode",
        *security,
        "--grpc-rere",
        "--superlink",
        superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--node-config",
        node_config,
    ]


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


def await_superlink(
    superlink: subprocess.Popen,
    ports: tuple[int, int],
    env: Mapping[str, str],
    credentials: ServerCredentials | None = None,
) -> None:
    """Once the SuperLink listens on its (control, fleet) ``ports``: the flwr CLI's connection to it.

    The connection is :data:`LOCAL_CONNECTION` in ``env``'s FLWR_HOME; with ``credentials`` it trusts
    their CA, and every SuperNode public key in them is registered (SuperNode authentication).
    """
    control, fleet = ports
    wait_for_port(control, 60, superlink)
    wait_for_port(fleet, 60, superlink)
    ca = credentials.ca if credentials else None
    flwr_cli.write_connection(Path(env["FLWR_HOME"]), LOCAL_CONNECTION, f"{LOOPBACK}:{control}", ca)
    if credentials:
        flwr_cli.register_nodes(LOCAL_CONNECTION, credentials.node_public_keys(), env)


def serve_superlink(credentials: ServerCredentials | None, metrics_port: int = 0) -> int:
    """The server container's SuperLink on all interfaces, ready (:data:`READY_FILE`) once its keys are registered.

    First the prepare service's outcome: a failure is printed, and ends the container (and ``up``).
    With ``metrics_port``, an exporter serves what the ServerApp processes record.
    """
    outcome = PREPARE_STATUS.read_text().strip() if PREPARE_STATUS.exists() else PREPARED
    if outcome != PREPARED:
        print(f"error: {outcome}", file=sys.stderr, flush=True)
        return 1
    cmd = superlink_argv(f"0.0.0.0:{FLEET_PORT}", "0.0.0.0", CONTROL_PORT, credentials)
    print(" ".join(cmd), flush=True)
    superlink = subprocess.Popen(cmd, env={**os.environ, **exporter.start(metrics_port)})
    for sig in (signal.SIGTERM, signal.SIGINT):  # PID 1 in its container: pass a stop on
        signal.signal(sig, lambda *_: superlink.terminate())
    how = "TLS, SuperNode authentication" if credentials else "plaintext"
    try:
        with tempfile.TemporaryDirectory(prefix="fedimdb-flwr-") as flwr_home:
            await_superlink(superlink, (CONTROL_PORT, FLEET_PORT), {"FLWR_HOME": flwr_home}, credentials)
    except (RuntimeError, flwr_cli.FlowerRunError) as exc:
        print(f"error: the SuperLink did not come up ({how}): {exc}", file=sys.stderr, flush=True)
        superlink.terminate()
        return 1
    keys = len(credentials.node_public_keys()) if credentials else 0
    print(f"SuperLink ready ({how}; {keys} SuperNode keys registered)", flush=True)
    READY_FILE.touch()
    return superlink.wait()


def healthcheck() -> int:
    """0 when the SuperLink in this container is ready and accepts connections on its Fleet and Control ports."""
    try:
        if not READY_FILE.exists():
            raise OSError("SuperLink not ready yet (SuperNode keys not registered)")
        for port in (FLEET_PORT, CONTROL_PORT):
            socket.create_connection((LOOPBACK, port), timeout=2).close()
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    """Container entry: ``superlink`` (all interfaces), ``supernode`` (env PARTITION_ID) or ``healthcheck``."""
    from fedimdb.deploy.credentials import NodeCredentials, ServerCredentials  # imports this module

    role = (argv if argv is not None else sys.argv[1:] or [""])[0]
    if role == "healthcheck":
        sys.exit(healthcheck())
    experiment = ExperimentConfig.from_env(env_file=None)
    mount = Path(CREDENTIALS_MOUNT) if experiment.tls_auth else None
    if role == "superlink":
        sys.exit(serve_superlink(ServerCredentials(mount) if mount else None, experiment.server_metrics_port))
    if role != "supernode":
        sys.exit("usage: python -m fedimdb.deploy.processes superlink|supernode|healthcheck")
    try:
        partition_id = int(os.environ["PARTITION_ID"])
    except (KeyError, ValueError):
        sys.exit("supernode: set PARTITION_ID to this client's partition number (0, 1, ...)")
    superlink = os.environ.get(SUPERLINK_ADDRESS_VAR) or f"{SERVER_HOST}:{FLEET_PORT}"
    cmd = supernode_argv(superlink, partition_id, CLIENT_SHARD_MOUNT,
                         credentials=NodeCredentials(mount) if mount else None)  # fmt: skip
    if experiment.warm_clients:
        cmd = forkserver.argv(cmd)
    os.environ.update(exporter.start(experiment.client_metrics_port))  # its ClientApps record for the exporter
    print(" ".join(cmd), flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
