"""How fedimdb starts Flower's long-running processes, in one place for every deployment.

Local processes (fedimdb/deploy/local.py) and containers (fedimdb/deploy/container.py, run by
docker-compose.yml) both use these command lines, and both bring a SuperLink up the same way
(:func:`await_superlink`: its ports, the ``flwr`` CLI's connection, every SuperNode key
registered). Ports and host names: fedimdb/deploy/topology.py.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from fedimdb.deploy import flwr_cli
from fedimdb.deploy.backend import StackError
from fedimdb.deploy.credentials import NodeCredentials, ServerCredentials
from fedimdb.deploy.topology import LOCAL_CONNECTION, LOOPBACK, NODE_PORT
from fedimdb.protocol import NODE_PARTITION_ID, NODE_SHARD_DIR
from fedimdb.waiting import wait_until


def superlink_argv(
    fleet_address: str,
    host: str,
    port: int,
    credentials: ServerCredentials | None = None,
    database: Path | None = None,
) -> list[str]:
    """A SuperLink with the gRPC (grpc-rere) Fleet API; no per-run dependency installation.

    With ``credentials``: TLS on every API and SuperNode authentication (registered keys only).
    With ``database``: its state (registered keys, node ids, runs) in that SQLite file, kept
    across restarts; in memory otherwise (fedimdb's deployments: bench/server_restart.py says why).
    """
    security = ["--insecure"]
    if credentials is not None:
        security = [
            "--ssl-ca-certfile",
            str(credentials.ca),
            "--ssl-certfile",
            str(credentials.cert),
            "--ssl-keyfile",
            str(credentials.key),
            "--enable-supernode-auth",
        ]
    state = ["--database", str(database)] if database is not None else []
    return [
        "flower-superlink",
        *security,
        *state,
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


def simulation_superlink_argv(host: str, port: int) -> list[str]:
    """A SuperLink that runs each submitted run on Flower's Simulation Engine (Ray): no Fleet API, no
    SuperNodes; its virtual clients run the ClientApp. Plaintext (SuperNode authentication does not apply)."""
    return [
        "flower-superlink",
        "--insecure",
        "--simulation",
        "--disable-runtime-dependency-installation",
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
        security = ["--root-certificates", str(credentials.ca), "--auth-supernode-private-key", str(credentials.key)]
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


def command_line(proc: subprocess.Popen) -> list[str]:
    """The argument list ``proc`` was started with (fedimdb starts every process from a list of strings)."""
    return cast("list[str]", proc.args)


def wait_for_port(address: str, timeout: float, proc: subprocess.Popen | None = None, step: float = 0.2) -> None:
    """Block until something accepts connections at ``address`` (host:port); fail early if ``proc`` died."""
    host, port = address.rsplit(":", 1)
    refused: list[OSError] = []

    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise StackError(
                f"{command_line(proc)[0]} exited with code {proc.returncode} before listening on {address}"
            )
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            refused[:] = [exc]
            return False
        return True

    if not wait_until(listening, timeout, step):
        raise StackError(f"nothing listened on {address} within {timeout:.0f} s ({refused[0]})")


def await_superlink(
    superlink: subprocess.Popen,
    ports: tuple[int, ...],
    env: Mapping[str, str],
    credentials: ServerCredentials | None = None,
) -> dict[Path, int]:
    """Once the SuperLink listens on its ``ports`` (control first, then the Fleet API's unless it
    simulates): the flwr CLI's connection to it.

    The connection is :data:`LOCAL_CONNECTION` in ``env``'s FLWR_HOME; with ``credentials`` it trusts
    their CA, and every SuperNode public key in them is registered (SuperNode authentication).
    Returns the node id each key was registered as now: none without ``credentials``, and none for
    the keys a SuperLink restarted on its database knows already.
    """
    for port in ports:
        wait_for_port(f"{LOOPBACK}:{port}", 60, superlink)
    control = ports[0]
    ca = credentials.ca if credentials else None
    flwr_cli.write_connection(Path(env["FLWR_HOME"]), LOCAL_CONNECTION, f"{LOOPBACK}:{control}", ca)
    if not credentials:
        return {}
    return flwr_cli.register_nodes(LOCAL_CONNECTION, credentials.node_public_keys(), env)
