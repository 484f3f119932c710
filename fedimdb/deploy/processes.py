"""How fedimdb starts Flower's long-running processes, in one place for every deployment.

Local processes (fedimdb/deploy/local.py) and containers (docker-compose.yml) both use
these command lines; in a container, ``python -m fedimdb.deploy.processes superlink|supernode``
builds them from environment variables and execs them.
"""

from __future__ import annotations

import os
import sys

FLEET_PORT = 9092  # gRPC Fleet API: SuperNodes -> SuperLink
CONTROL_PORT = 8000  # HTTP Control (flwr CLI) and Runtime (ServerApp) API
NODE_PORT = 9094  # a SuperNode's own Runtime API for its ClientApps


def superlink_argv(fleet_address: str, host: str, port: int) -> list[str]:
    """A SuperLink with the gRPC (grpc-rere) Fleet API; no per-run dependency installation."""
    return [
        "flower-superlink",
        "--insecure",
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


def supernode_argv(superlink: str, partition_id: int, data_dir: str, port: int = NODE_PORT) -> list[str]:
    """A SuperNode on gRPC (grpc-rere) serving one partition, read from ``data_dir``."""
    node_config = f'partition-id={partition_id} data-dir="{data_dir}"'
    return [
        "flower-supernode",
        "--insecure",
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


def main(argv: list[str] | None = None) -> None:
    """Container entry: ``superlink`` (listens on all interfaces) or ``supernode`` (env PARTITION_ID)."""
    role = (argv if argv is not None else sys.argv[1:] or [""])[0]
    if role == "superlink":
        cmd = superlink_argv(f"0.0.0.0:{FLEET_PORT}", "0.0.0.0", CONTROL_PORT)
    elif role == "supernode":
        try:
            partition_id = int(os.environ["PARTITION_ID"])
        except (KeyError, ValueError):
            sys.exit("supernode: set PARTITION_ID to this client's partition number (0, 1, ...)")
        cmd = supernode_argv(
            os.environ.get("SUPERLINK", f"server:{FLEET_PORT}"), partition_id, os.environ.get("SHARD_DIR", "/data")
        )
    else:
        sys.exit("usage: python -m fedimdb.deploy.processes superlink|supernode")
    print(" ".join(cmd), flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
