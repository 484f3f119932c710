"""The containers' entry points: the server's SuperLink, a client's SuperNode, the server's health check.

``python -m fedimdb.deploy.container superlink|supernode`` builds the command lines of
fedimdb/deploy/processes.py from environment variables (``FEDIMDB_TLS_AUTH``: TLS and SuperNode
authentication with the credentials mounted at :data:`~fedimdb.deploy.topology.CREDENTIALS_MOUNT`)
and runs them; ``... healthcheck`` is the server container's health check (docker-compose.yml).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from fedimdb.config import ExperimentConfig
from fedimdb.deploy import flwr_cli, forkserver
from fedimdb.deploy.credentials import NodeCredentials, ServerCredentials
from fedimdb.deploy.processes import await_superlink, superlink_argv, supernode_argv
from fedimdb.deploy.topology import (
    ACCESS_LOG,
    ACCESS_LOG_VAR,
    CLIENT_SHARD_MOUNT,
    CONTROL_PORT,
    CREDENTIALS_MOUNT,
    FLEET_PORT,
    LOOPBACK,
    PREPARE_STATUS,
    PREPARED,
    READY_FILE,
    SERVER_HOST,
    SUPERLINK_ADDRESS_VAR,
    SUPERLINK_DATABASE_VAR,
)
from fedimdb.metrics import exporter

ACCESS_LOGGER = "[uvicorn.access]"  # how Flower's SuperLink marks its access log lines


def serve_superlink(credentials: ServerCredentials | None, metrics_port: int = 0) -> int:
    """The server container's SuperLink on all interfaces, ready (:data:`READY_FILE`) once its keys are registered.

    First the prepare service's outcome: a failure is printed, and ends the container (and ``up``).
    With ``metrics_port``, an exporter serves what the ServerApp processes record. With a file in
    :data:`~fedimdb.deploy.topology.SUPERLINK_DATABASE_VAR`, the SuperLink keeps its registered keys
    and nodes there: restarted, it knows its SuperNodes, which reconnect as the nodes they were.
    """
    outcome = PREPARE_STATUS.read_text().strip() if PREPARE_STATUS.exists() else PREPARED
    if outcome != PREPARED:
        print(f"error: {outcome}", file=sys.stderr, flush=True)
        return 1
    READY_FILE.unlink(missing_ok=True)  # a restarted container keeps its /tmp: not ready before its SuperLink is
    database = os.environ.get(SUPERLINK_DATABASE_VAR) or None
    cmd = superlink_argv(
        f"0.0.0.0:{FLEET_PORT}", "0.0.0.0", CONTROL_PORT, credentials, Path(database) if database else None
    )
    print(" ".join(cmd), flush=True)
    env = {**os.environ, **exporter.start(metrics_port)}
    superlink = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    show_access = os.environ.get(ACCESS_LOG_VAR, "false").lower() == "true"
    assert superlink.stdout is not None
    threading.Thread(target=relay, args=(superlink.stdout, ACCESS_LOG, show_access), daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):  # PID 1 in its container: pass a stop on
        signal.signal(sig, lambda *_: superlink.terminate())
    how = "TLS, SuperNode authentication" if credentials else "plaintext"
    try:
        with tempfile.TemporaryDirectory(prefix="fedimdb-flwr-") as flwr_home:
            registered = await_superlink(superlink, (CONTROL_PORT, FLEET_PORT), {"FLWR_HOME": flwr_home}, credentials)
    except (RuntimeError, flwr_cli.FlowerRunError) as exc:
        print(f"error: the SuperLink did not come up ({how}): {exc}", file=sys.stderr, flush=True)
        superlink.terminate()
        return 1
    known = (len(credentials.node_public_keys()) if credentials else 0) - len(registered)
    kept = f", {known} already known from its database {database}" if known else ""
    print(f"SuperLink ready ({how}; {len(registered)} SuperNode keys registered{kept})", flush=True)
    READY_FILE.touch()
    return superlink.wait()


def relay(lines: Iterable[str], access_log: Path, show_access: bool) -> None:
    """The SuperLink's output to this container's: its HTTP access log (a line per request of every
    ServerApp and flwr call, thousands a run) to ``access_log``, and there only unless ``show_access``."""
    with open(access_log, "a", buffering=1) as kept:
        for line in lines:
            is_access = ACCESS_LOGGER in line
            if is_access:
                kept.write(line)
            if show_access or not is_access:
                sys.stdout.write(line)
                sys.stdout.flush()


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
    role = (argv if argv is not None else sys.argv[1:] or [""])[0]
    if role == "healthcheck":
        sys.exit(healthcheck())
    experiment = ExperimentConfig.from_env(env_file=None)
    mount = Path(CREDENTIALS_MOUNT) if experiment.tls_auth else None
    if role == "superlink":
        sys.exit(serve_superlink(ServerCredentials(mount) if mount else None, experiment.server_metrics_port))
    if role != "supernode":
        sys.exit("usage: python -m fedimdb.deploy.container superlink|supernode|healthcheck")
    try:
        partition_id = int(os.environ["PARTITION_ID"])
    except (KeyError, ValueError):
        sys.exit("supernode: set PARTITION_ID to this client's partition number (0, 1, ...)")
    superlink = os.environ.get(SUPERLINK_ADDRESS_VAR) or f"{SERVER_HOST}:{FLEET_PORT}"
    cmd = supernode_argv(
        superlink, partition_id, CLIENT_SHARD_MOUNT, credentials=NodeCredentials(mount) if mount else None
    )
    if experiment.warm_clients:
        cmd = forkserver.argv(cmd)
    os.environ.update(exporter.start(experiment.client_metrics_port))  # its ClientApps record for the exporter
    print(" ".join(cmd), flush=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
