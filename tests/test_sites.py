"""Sites on several hosts, tried on one: the server's project (docker-compose.server.yml) and two
client sites (docker-compose.site.yml), each a Compose project with a network of its own. The sites
reach the SuperLink through the Fleet port the server publishes on the host, over TLS, each signing
in with its own key. Needs Docker (see test_compose.py).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedimdb.artifacts import read_csv, verify_run
from fedimdb.deploy.compose import build_override
from fedimdb.deploy.docker_artifacts import pull_artifacts, service_containers
from fedimdb.deploy.local import free_port
from fedimdb.waiting import wait_until
from tests.conftest import ROOT, compose, require_docker

SITES = 2
RUN_NAME = "sites-e2e"
SETTINGS = {
    "model": "tiny",
    "num-rounds": 1,
    "max-steps": 1,
    "batch-size": 8,
    "eval-rows": 32,
    "local-eval-rows": 16,
    "node-wait-timeout": 240,
}  # a site that never joins fails the run in minutes
PUBLIC_NAME = "host.docker.internal"  # how a site on this host reaches the server's published port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]
require_docker()


def test_two_site_projects_and_the_server_project_complete_a_run(imdb_dir: Path, tmp_path: Path) -> None:
    import docker

    client = docker.from_env()
    override = tmp_path / "override.yml"
    settings = build_override(SITES, SETTINGS, {"data-source": str(imdb_dir)}, RUN_NAME, client_services=False)
    override.write_text(yaml.safe_dump(settings))
    port, token = free_port(), secrets.token_hex(3)
    env = {
        "FEDIMDB_SHARDS_DIR": str(tmp_path / "shards"),
        "CREDENTIALS_DIR": str(tmp_path / "credentials"),
        "FLEET_PUBLISH_PORT": str(port),
        "SERVER_PUBLIC_NAME": PUBLIC_NAME,
    }
    server_files, site_files = [ROOT / "docker-compose.server.yml", override], [ROOT / "docker-compose.site.yml"]
    server, sites = f"fedimdb-server-{token}", [f"fedimdb-site{k}-{token}" for k in range(SITES)]
    site_env = [{**env, "PARTITION_ID": str(k), "SUPERLINK_ADDRESS": f"{PUBLIC_NAME}:{port}"} for k in range(SITES)]
    try:
        up = compose(server_files, "up", "--detach", "--build", env=env, project=server, timeout=1800)
        assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
        for site, extra in zip(sites, site_env, strict=True):
            up = compose(site_files, "up", "--detach", env=extra, project=site, timeout=600)
            assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
        (runner,) = service_containers(client, server, "runner")
        code = runner.wait(timeout=900)["StatusCode"]
        assert code == 0, runner.logs().decode()[-4000:]
        run_dir = pull_artifacts(server, RUN_NAME, tmp_path / "results", client)
        verify_run(run_dir)
        assert sorted(int(r["partition_id"]) for r in read_csv(run_dir / "clients.csv")) == list(range(SITES))
        (link,) = service_containers(client, server, "server")
        assert (
            f"SuperLink ready (TLS, SuperNode authentication; {SITES} SuperNode keys registered)"
            in link.logs().decode()
        )
        for site in sites:
            (node,) = service_containers(client, site, "client")
            assert list(node.attrs["NetworkSettings"]["Networks"]) == [f"{site}_federation"], "a network of its own"
        restart_the_server_and_run_again(client, link, sites, server_files, env, server, tmp_path)
    finally:
        for site, extra in zip(sites, site_env, strict=True):
            compose(site_files, "down", "-v", "-t", "5", env=extra, project=site)
        compose(server_files, "down", "-v", "-t", "5", env=env, project=server)


def restart_the_server_and_run_again(
    client: Any, link: Any, sites: list[str], files: list[Path], env: dict[str, str], server: str, tmp_path: Path
) -> None:
    """The server container restarts (a crash, or to register more sites' keys). On its database the
    SuperLink knows the sites' keys and nodes: their SuperNodes reconnect as the nodes they were, not
    restarted, and the next run completes with both (in memory, they stop: SuperNode exits 0)."""
    link.restart(timeout=10)
    assert wait_until(lambda: healthy(link), 180, 2.0), link.logs().decode()[-3000:]
    assert f"0 SuperNode keys registered, {SITES} already known from its database" in link.logs().decode()
    again = f"{RUN_NAME}-again"
    run = compose(
        files, "run", "--rm", "--no-deps", "-e", f"RUN_NAME={again}", "runner", env=env, project=server, timeout=900
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    run_dir = pull_artifacts(server, again, tmp_path / "results", client)
    verify_run(run_dir)
    assert sorted(int(r["partition_id"]) for r in read_csv(run_dir / "clients.csv")) == list(range(SITES))
    for site in sites:
        (node,) = service_containers(client, site, "client")
        assert node.attrs["State"]["Running"] and node.attrs["RestartCount"] == 0, f"{site}'s SuperNode stopped"


def healthy(container: Any) -> bool:
    """Whether the container passes its health check (docker-compose.yml's) now."""
    container.reload()
    return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")
