"""The Compose stack's one-shot ``prepare`` service: the shards, then the credentials; its outcome for the server.

``python -m fedimdb.deploy.prepare`` runs as root in the server image, with the host folders of
the shards and the credentials mounted read-write. It always exits 0 and writes its outcome to
:data:`~fedimdb.deploy.topology.PREPARE_STATUS` in the ``status`` volume: ``done``, or the one line
that says what failed and how to fix it. The server container, which starts once this has exited
and whose output ``docker compose up`` shows, reads it first and on a failure prints that line and
exits, ending ``up`` with it. (Failing here would show only ``service "prepare" didn't complete
successfully: exit 1``: the service cannot be attached, as with ``--exit-code-from runner`` an
attached one-shot service's exit ends ``up``.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedimdb.config import ConfigError, DataConfig, RunConfig
from fedimdb.data import ShardError, prepare_shards
from fedimdb.deploy.credentials import give_to, make_credentials, server_names
from fedimdb.deploy.topology import CONTAINER_USER, CREDENTIALS_MOUNT, PREPARE_STATUS, PREPARED, SHARDS_MOUNT

PUBLIC_NAME_VAR = "SERVER_PUBLIC_NAME"  # docker-compose.server.yml: the name remote sites reach the server by


def prepare() -> str:
    """Shards and credentials as the environment (.env, docker-compose.yml) says; :data:`PREPARED` or why not."""
    try:
        prepare_shards(DataConfig.from_env(env_file=None, overrides={"shards_dir": SHARDS_MOUNT}))
        clients = RunConfig.from_env(env_file=None).num_clients
        make_credentials(Path(CREDENTIALS_MOUNT), clients, server_names(os.environ.get(PUBLIC_NAME_VAR, "")))
        give_to(Path(CREDENTIALS_MOUNT), CONTAINER_USER)
    except (ConfigError, ShardError, OSError) as exc:
        return f"preparing the data and credentials failed: {exc}"
    return PREPARED


def main() -> int:
    """Prepare, say how it went, leave the outcome for the server; exit 0 either way (see above)."""
    outcome = prepare()
    print(f"prepare: {outcome}" if outcome == PREPARED else f"error: {outcome}", flush=True)
    PREPARE_STATUS.write_text(outcome + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
