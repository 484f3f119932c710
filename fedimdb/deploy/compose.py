"""``docker-compose.override.yml`` for a run that differs from .env: client count and settings.

docker-compose.yml declares client-0 ... client-9. For N < 10 the override puts the clients
N ... 9 in an unused profile (so ``docker compose up`` does not start them); for N > 10 it adds
client-10 ... client-(N-1) extending client-0, each with its own shard and credentials. Run and
data settings go into the runner's and the data-preparation service's environment, where they
beat .env; the client count also into the prepare service's (one key pair per client). Values are validated here,
before any container starts.

    python -m fedimdb.deploy.compose --clients 3 --set num-rounds=2 --set model=tiny \\
        --data-source ../shared/data/imdb > docker-compose.override.yml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from fedimdb.config import ConfigError, DataConfig, RunConfig, check_clients_fit, env_name
from fedimdb.data import client_dir_name
from fedimdb.deploy import APP_DIR
from fedimdb.deploy.monitoring import CLIENTS_ALIAS, MONITORING_NETWORK
from fedimdb.deploy.topology import APP_MOUNT, CLIENT_SHARD_MOUNT, CONTINUE_MOUNT, CREDENTIALS_MOUNT, SERVER_HOST

COMPOSE_FILE = APP_DIR / "docker-compose.yml"
DECLARED_CLIENTS = 10  # client-0 ... client-9 in docker-compose.yml
CONTAINER_SOURCE = "/imdb"  # where the prepare service mounts a local IMDB folder
SHARDS_DIR_VAR = env_name("shards_dir")  # docker-compose.yml mounts the shards from this host folder
CREDENTIALS_DIR_VAR = "CREDENTIALS_DIR"  # ... and the credentials from this one (Compose only)
APP_DIR_VAR = env_name("app_dir")  # the runner submits the Flower App in this folder


def _env(settings: dict[str, Any]) -> dict[str, str]:
    return {
        env_name(k.replace("-", "_")): str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()
    }


def build_override(
    num_clients: int,
    run_settings: dict[str, Any],
    data_settings: dict[str, Any],
    run_name: str | None = None,
    client_services: bool = True,
    monitoring: bool = False,
    app_dir: Path | None = None,
    continue_from: Path | None = None,
) -> dict[str, Any]:
    """The override as a dict; validates the settings against fedimdb/config.py first.

    ``client_services=False``: for docker-compose.server.yml, whose clients are sites of their own.
    ``monitoring``: the server and the clients also join the network of the experiment's Prometheus
    (fedimdb/deploy/monitoring.py). ``app_dir``: a Flower App of this host's to run instead of the
    image's own, mounted read-only into the runner, which submits it (the ``app-dir`` setting).
    ``continue_from``: a failed run's folder on this host, mounted read-only into the server container
    under :data:`~fedimdb.deploy.topology.CONTINUE_MOUNT` (``continue-from`` names it there).
    """
    RunConfig.from_mapping({**run_settings, "num-clients": num_clients}, origin="compose override")
    data = dict(data_settings)
    services: dict[str, Any] = {}
    source = data.get("data-source")
    if source is not None and Path(source).expanduser().is_dir():
        host = str(Path(source).expanduser().resolve())
        data["data-source"] = CONTAINER_SOURCE
        services["prepare"] = {"volumes": [f"{host}:{CONTAINER_SOURCE}:ro"]}
    else:
        DataConfig.from_mapping(data, origin="compose override")
    partitions = int(data.get("num-partitions", DataConfig().num_partitions))
    check_clients_fit(RunConfig(num_clients=num_clients), partitions)

    services.setdefault("prepare", {})["environment"] = _env({**data, "num-clients": num_clients})
    runner_env = _env({**run_settings, "num-clients": num_clients})
    if run_name:
        runner_env["RUN_NAME"] = run_name
    services["runner"] = {"environment": runner_env}
    if app_dir is not None:
        runner_env[APP_DIR_VAR] = APP_MOUNT
        services["runner"]["volumes"] = [f"{app_dir.resolve()}:{APP_MOUNT}:ro"]
    if continue_from is not None:
        mount = f"{continue_from.resolve()}:{CONTINUE_MOUNT}/{continue_from.name}:ro"
        services[SERVER_HOST] = {"volumes": [mount]}
    if not client_services:
        return {"services": services}
    for i in range(num_clients, DECLARED_CLIENTS):
        services[f"client-{i}"] = {"profiles": ["unused-client"]}
    for i in range(DECLARED_CLIENTS, num_clients):
        services[f"client-{i}"] = {
            "extends": {"file": str(COMPOSE_FILE), "service": "client-0"},
            "environment": {"PARTITION_ID": str(i)},
            "volumes": [
                f"${{{SHARDS_DIR_VAR}:-./data/shards}}/{client_dir_name(i)}:{CLIENT_SHARD_MOUNT}:ro",
                f"${{{CREDENTIALS_DIR_VAR}:-./data/credentials}}/{client_dir_name(i)}:{CREDENTIALS_MOUNT}:ro",
            ],
        }
    if not monitoring:
        return {"services": services}
    _join_monitoring(services, num_clients)
    return {"services": services, "networks": {"monitoring": {"external": True, "name": MONITORING_NETWORK}}}


def _join_monitoring(services: dict[str, Any], num_clients: int) -> None:
    """The server and every client on the monitoring network too, under the names Prometheus scrapes."""
    services.setdefault(SERVER_HOST, {})["networks"] = {"federation": {}, "monitoring": {}}
    for i in range(num_clients):
        services.setdefault(f"client-{i}", {})["networks"] = {
            "federation": {"aliases": [CLIENTS_ALIAS]},
            "monitoring": {"aliases": [CLIENTS_ALIAS]},
        }


def main(argv: list[str] | None = None) -> int:
    """Print (or write with -o) the override for the given client count and settings."""
    p = argparse.ArgumentParser(prog="python -m fedimdb.deploy.compose", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, required=True, help="number of client containers")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run setting, e.g. --set num-rounds=2 (repeatable)",
    )
    p.add_argument(
        "--data-set",
        dest="data_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="data setting, e.g. --data-set partitioner=dirichlet (repeatable)",
    )
    p.add_argument("--data-source", help="hub id, or a local folder with train/test Parquet (mounted read-only)")
    p.add_argument("--run-name", help="name of the run's folder in the artifacts volume")
    p.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    args = p.parse_args(argv)
    try:
        run = dict(_pair(s) for s in args.settings)
        data = dict(_pair(s) for s in args.data_settings)
        if args.data_source:
            data["data-source"] = args.data_source
        text = yaml.safe_dump(build_override(args.clients, run, data, args.run_name), sort_keys=False)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"{item!r}: write it as KEY=VALUE")
    return key.strip(), value.strip()


if __name__ == "__main__":
    sys.exit(main())
