"""The Compose stack's one-shot runner: submit the run, follow it, verify, exit 0 or 1.

``python -m fedimdb.deploy.runner`` inside the ``runner`` service. Settings come from the
container's environment (FEDIMDB_*, from .env and docker-compose.yml); the run's artifacts
go to ``/artifacts/$RUN_NAME`` on the shared volume (a new name per run: an existing folder
is never overwritten), and the ServerApp reads the held-out set at ``/held-out`` (both mounts:
fedimdb/deploy/topology.py).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from fedimdb.artifacts import RUN_FILE, ArtifactError, verify_run
from fedimdb.config import ConfigError, ExperimentConfig, RunConfig
from fedimdb.deploy import flwr_cli
from fedimdb.deploy.backend import StackError
from fedimdb.deploy.credentials import CA_CERT
from fedimdb.deploy.processes import wait_for_port
from fedimdb.deploy.topology import ARTIFACTS_MOUNT, CONTROL_PORT, CREDENTIALS_MOUNT, HELD_OUT_MOUNT, SERVER_HOST

COMPOSE_CONNECTION = "fedimdb-compose"


def main() -> int:
    """Run once; exit 0 only for a completed run whose artifacts verify."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # PID 1 in its container: no default handler
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        cfg = RunConfig.from_env(env_file=None)
        deployment = ExperimentConfig.from_env(env_file=None)
    except ConfigError as exc:
        log(f"error: {exc}")
        return 2
    name = os.environ.get("RUN_NAME") or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")
    run_dir = Path(ARTIFACTS_MOUNT) / name
    if (run_dir / RUN_FILE).exists():
        log(f"error: {run_dir} already holds a run; set RUN_NAME to a new name")
        return 2
    address = f"{SERVER_HOST}:{CONTROL_PORT}"
    with tempfile.TemporaryDirectory(prefix="fedimdb-flwr-") as flwr_home:
        env = {"FLWR_HOME": flwr_home}
        ca = (
            Path(CREDENTIALS_MOUNT) / CA_CERT if deployment.tls_auth else None
        )  # the Control API serves TLS under this CA
        flwr_cli.write_connection(Path(flwr_home), COMPOSE_CONNECTION, address, ca)
        try:
            wait_for_port(address, 120, step=1.0)  # healthy, but a slow DNS or restart gets patience
            run_config = {**cfg.as_dict(), "held-out-dir": HELD_OUT_MOUNT, "output-dir": str(run_dir)}
            entry = flwr_cli.run_to_completion(
                COMPOSE_CONNECTION, run_config, env, log=log, app_dir=flwr_cli.app_folder(deployment.app_dir)
            )
            verify_run(run_dir)
        except (StackError, ArtifactError) as exc:
            log(f"run failed: {exc}")
            return 1
    log(f"run completed ({entry['status']}); artifacts verified in the artifacts volume at {run_dir}")
    log(f"copy them out with: mkdir -p results && docker compose cp runner:{run_dir} results/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
