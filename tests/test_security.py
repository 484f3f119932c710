"""TLS and SuperNode authentication with Flower's own mechanisms, on real local processes.

With ``tls-auth``, the SuperLink serves every API over TLS and admits only SuperNodes whose public
key was registered (``flwr supernode register``) before they start.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fedimdb.artifacts import LOGS_DIR, verify_run
from fedimdb.config import RunConfig
from fedimdb.deploy.credentials import make_credentials
from fedimdb.deploy.local import LocalFederation, free_port, process_env
from fedimdb.deploy.processes import supernode_argv
from fedimdb.deploy.topology import LOCAL_CONNECTION
from tests.conftest import local_run_args, orchestrate

pytestmark = pytest.mark.timeout(600)
AUTH_REFUSED = "Exit Code: 305"  # what flower-supernode logs when the SuperLink will not activate it
CONNECT_FAILED = "Connection attempt failed"  # what flower-supernode logs each time it cannot reach the SuperLink


def test_credentials_are_private_and_never_overwritten(tmp_path: Path) -> None:
    creds = make_credentials(tmp_path / "creds", 2)
    server, node = creds.server, creds.node(1)
    assert (server.ca.stat().st_mode & 0o777, server.key.stat().st_mode & 0o777) == (0o644, 0o600)
    assert node.key.stat().st_mode & 0o777 == 0o600
    assert node.key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert node.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert server.node_public_keys() == [server.node_public_key(0), server.node_public_key(1)]
    assert server.node_public_key(1).read_bytes() == node.public_key.read_bytes()
    assert node.ca.read_bytes() == server.ca.read_bytes() == creds.ca.read_bytes()
    before = {p: p.read_bytes() for p in creds.root.rglob("*") if p.is_file()}
    make_credentials(creds.root, 3)  # a third client: its keys are added, nothing else changes
    assert {p: p.read_bytes() for p in before} == before
    assert creds.node(2).key.exists() and len(server.node_public_keys()) == 3
    assert not (server.folder / "ca.key").exists() and not (node.folder / "ca.key").exists(), "the CA key stays home"


def _nodes(env: dict[str, str]) -> list[dict]:
    out = subprocess.run(
        ["flwr", "supernode", "list", LOCAL_CONNECTION, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout)["nodes"]


def _knocks(log: Path, proc: subprocess.Popen, times: int, timeout: float) -> int:
    """Failed connection attempts in ``log`` once there are ``times`` of them (or ``timeout`` s passed),
    while ``proc`` is still alive: a node that hangs or exits does not knock again."""
    deadline = time.monotonic() + timeout
    while (n := log.read_text(errors="replace").count(CONNECT_FAILED)) < times and time.monotonic() < deadline:
        assert proc.poll() is None, f"the node exited ({proc.returncode}) instead of retrying"
        time.sleep(0.5)
    assert proc.poll() is None, "the node is still trying"
    return n


@pytest.mark.slow
def test_unregistered_keys_and_plaintext_are_refused(tmp_path: Path) -> None:
    creds = make_credentials(tmp_path / "creds", 1)
    stranger = make_credentials(tmp_path / "stranger", 1).node(0)  # a key pair of its own, never registered ...
    shutil.copy(creds.ca, stranger.ca)  # ... that trusts the federation's CA
    env = process_env(RunConfig(num_clients=1), tmp_path / "flwr-home")
    with LocalFederation(tmp_path, 1, tmp_path / "logs", env, warm_clients=False, credentials=creds) as fed:
        argv = {
            "unregistered": supernode_argv(fed.fleet_address, 0, str(tmp_path), free_port(), stranger),
            "plaintext": supernode_argv(fed.fleet_address, 0, str(tmp_path), free_port(), None),
        }
        logs = {name: open(tmp_path / f"{name}.log", "wb") for name in argv}  # noqa: SIM115 - closed below
        procs = {
            name: subprocess.Popen(a, stdout=logs[name], stderr=subprocess.STDOUT, env=fed.env)
            for name, a in argv.items()
        }
        try:
            assert procs["unregistered"].wait(timeout=120) != 0
            knocks = _knocks(tmp_path / "plaintext.log", procs["plaintext"], times=2, timeout=120)
            assert knocks >= 2, "a plaintext SuperNode keeps knocking (and failing), it is not let in"
            nodes = _nodes(fed.env)
        finally:
            for proc in procs.values():
                proc.kill()
                proc.wait()
            for log in logs.values():
                log.close()
    refused = (tmp_path / "unregistered.log").read_text()
    assert AUTH_REFUSED in refused and "Failed to activate SuperNode" in refused
    assert [n["status"] for n in nodes] == ["online"], "only the registered SuperNode is in the federation"


@pytest.mark.slow
def test_a_run_with_tls_and_registered_keys_completes(imdb_dir: Path, tmp_path: Path) -> None:
    args = local_run_args(
        tmp_path / "results",
        tmp_path / "shards",
        imdb_dir,
        clients=2,
        rounds=1,
        settings=["max-steps=1", "batch-size=8", "eval-rows=16", "local-eval-rows=8"],
    )
    run = orchestrate(*args, "--metrics-port", "0", env={"FEDIMDB_TLS_AUTH": "true"}, timeout=480)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "SuperNodes connect over gRPC (TLS, registered keys)" in " ".join(run.stderr.split())
    (repeat,) = (tmp_path / "results").glob("*/repeat-0")
    verify_run(repeat)
    superlink = (repeat / LOGS_DIR / "superlink.log").read_text()
    assert "running on https://" in superlink, "the Control and Runtime APIs serve TLS"
    assert superlink.count("[ControlServicer.RegisterNode] Created node_id") == 2
    assert superlink.count("[Fleet.ActivateNode] Activated node_id") == 2
