"""Where fedimdb's processes meet: ports, host names, container mount points, and the environment
variables the containers read.

Declared here and nowhere else in Python, imported by whatever needs them; docker-compose.yml
repeats the mount points (it cannot import them). A leaf: it imports only fedimdb.config.
"""

from __future__ import annotations

from pathlib import Path

from fedimdb.config import env_name

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
APP_MOUNT = "/flower-app"  # an app-dir of the host's, as the runner sees it (read-only)
CONTINUE_MOUNT = "/continue"  # the server container sees the failed attempt it continues under here (read-only)
SHARDS_MOUNT = "/shards"  # the prepare service's view of the host's shards folder
PREPARE_STATUS = Path("/status/prepare")  # the prepare service's outcome, read by the server container
PREPARED = "done"  # PREPARE_STATUS after a preparation that worked; anything else says what failed
CONTAINER_USER = "fedimdb"  # the images' user (docker/install.sh), owner of the mounted credentials
READY_FILE = Path("/tmp/fedimdb-superlink-ready")  # in the server container: SuperLink up, keys registered
ACCESS_LOG = Path("/tmp/superlink-access.log")  # in the server container: the SuperLink's HTTP access log
ACCESS_LOG_VAR = "SUPERLINK_ACCESS_LOG"  # Compose: true prints that log in the server's output as well
SUPERLINK_DATABASE_VAR = "SUPERLINK_DATABASE"  # server container: a file for the SuperLink's state; unset: in memory
LOOPBACK = "127.0.0.1"
LOCAL_CONNECTION = "fedimdb-local"  # the flwr CLI's name for a SuperLink on this host or in this container
TLS_AUTH_VAR = env_name("tls_auth")  # read by the server, client and runner containers
WARM_CLIENTS_VAR = env_name("warm_clients")  # read by the client containers' supernode role
SERVER_METRICS_VAR = env_name("server_metrics_port")  # the server container's exporter
CLIENT_METRICS_VAR = env_name("client_metrics_port")  # each client container's exporter
SUPEREXEC_POLL_VAR = env_name("superexec_poll_interval")  # docker-compose.yml hands it to Flower's SuperExec
FLOWER_POLL_VAR = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's own knob, read by flower-superexec
