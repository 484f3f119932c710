"""How fedimdb starts Flower's long-running processes, in one place for every deployment.

Local processes (fedimdb/deploy/local.py) and containers (docker-compose.yml) both use
these command lines; in a container, ``python -m fedimdb.deploy.processes superlink|supernode``
builds them from environment variables and execs them, and ``... healthcheck`` is the server
container's health check. The ports and container paths are declared here and nowhere else in
Python; docker-compose.yml repeats the mount points (it cannot import them).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedimdb.config import ExperimentConfig, env_name
from fedimdb.deploy import forkserver
from fedimdb.protocol import NODE_PARTITION_ID, NODE_SHARD_DIR

if TYPE_CHECKING:  # credentials.py imports this module's SERVER_HOST
    from fedimdb.deploy.credentials import Credentials

FLEET_PORT = 9092  # gRPC Fleet API: SuperNodes -> SuperLink
CONTROL_PORT = 8000  # HTTP Control (flwr CLI) and Runtime (ServerApp) API
NODE_PORT = 9094  # a SuperNode's own Runtime API for its ClientApps
SERVER_HOST = "server"  # the SuperLink's name on the Compose network (its service name)
CLIENT_SHARD_MOUNT = "/data"  # where a client container sees its own shard (read-only)
HELD_OUT_MOUNT = "/held-out"  # where the server container sees the held-out set (read-only)
ARTIFACTS_MOUNT = "/artifacts"  # the artifacts volume, in the server and runner containers
WARM_CLIENTS_VAR = env_name("warm_clients")  # read by the client containers' supernode role
SUPEREXEC_POLL_VAR = env_name("superexec_poll_interval")  # docker-compose.yml hands it to Flower's SuperExec
FLOWER_POLL_VAR = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's own knob, read by flower-superexec


def runs_one_of(pid: int, words: tuple[bytes, ...]) -> bool:
    """Whether process ``pid`` is alive and its command line holds one of ``words`` (Linux /proc; else False)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(word in cmdline for word in words)


def superlink_argv(fleet_address: str, host: str, port: int, credentials: Credentials | None = None) -> list[str]:
    """A SuperLink with the gRPC (grpc-rere) Fleet API; no per-run dependency installation.

    With ``credentials``: TLS on every API and SuperNode authentication (registered keys only).
    """
    security = ["--insecure"]
    if credentials is not None:
        security = ["--ssl-ca-certfile", str(credentials.ca), "--ssl-certfile", str(credentials.server_cert),
                    "--ssl-keyfile", str(credentials.server_key), "--enable-supernode-auth"]  # fmt: skip
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
    superlink: str, partition_id: int, shard_dir: str, port: int = NODE_PORT, credentials: Credentials | None = None
) -> list[str]:
    """A SuperNode on gRPC (grpc-rere) serving one partition, read from ``shard_dir``.

    With ``credentials``: it trusts their CA and signs in with the partition's private key.
    """
    node_config = f'{NODE_PARTITION_ID}={partition_id} {NODE_SHARD_DIR}="{shard_dir}"'
    security = ["--insecure"]
    if credentials is not None:
        security = ["--root-certificates", str(credentials.ca),
                    "--auth-supernode-private-key", str(credentials.node_key(partition_id))]  # fmt: skip
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


def healthcheck() -> int:
    """0 when the SuperLink in this container accepts connections on its Fleet and Control ports."""
    try:
        for port in (FLEET_PORT, CONTROL_PORT):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    """Container entry: ``superlink`` (all interfaces), ``supernode`` (env PARTITION_ID) or ``healthcheck``."""
    role = (argv if argv is not None else sys.argv[1:] or [""])[0]
    if role == "healthcheck":
        sys.exit(healthcheck())
    if role == "superlink":
        cmd = superlink_argv(f"0.0.0.0:{FLEET_PORT}", "0.0.0.0", CONTROL_PORT)
    elif role == "supernode":
        try:
            partition_id = int(os.environ["PARTITION_ID"])
        except (KeyError, ValueError):
            sys.exit("supernode: set PARTITION_ID to this client's partition number (0, 1, ...)")
        cmd = supernode_argv(f"{SERVER_HOST}:{FLEET_PORT}", partition_id, CLIENT_SHARD_MOUNT)
        if ExperimentConfig.from_env(env_file=None).warm_clients:
            cmd = forkserver.argv(cmd)
    else:
        sys.exit("usage: python -m fedimdb.deploy.processes superlink|supernode|healthcheck")
    print(" ".join(cmd), flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
