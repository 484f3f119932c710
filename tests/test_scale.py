"""Scale on the simulation backend, on a running Ray cluster of two nodes: 200 virtual clients of the tiny
model, 20 sampled a round, complete through ``orchestrate.py --backend simulation --ray-address`` (Flower's
Simulation Engine on Ray) with every artifact verified.

A Ray head and a second Ray node, each started with ``ray start`` as its own processes and one CPU, both on
loopback; Ray's record of the run's ``ClientAppActor`` actors must show them on both nodes. The local
backend stops at about 30 client nodes on this machine (docs/benchmarks.md, "Scale"); the figures of larger
runs: ``python -m bench.scale --backend simulation``. On a real multi-machine cluster: docs/simulation.md.
(Ray started by Flower itself, without ``--ray-address``: the simulation runs of tests/test_e2e_local.py and
tests/test_continue_local.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fedimdb.artifacts import CLIENTS_FILE, ROUNDS_FILE, read_csv, verify_run
from fedimdb.deploy.local import free_port
from tests.conftest import RUN_MARK, imdb_sample, marked_processes, orchestrate

pytestmark = pytest.mark.slow
CLIENTS, SAMPLED, ROUNDS = 200, 20, 2
CLIENT_ACTOR = "ClientAppActor"  # flwr.simulation.ray_transport.ray_actor: the actor that runs a virtual client
ACTOR_NODES = """
import json, sys, ray
from ray._private.state import actors
ray.init(address=sys.argv[1], logging_level="ERROR")
print(json.dumps([[a["ActorClassName"], a["Address"]["NodeID"]] for a in actors().values()]))
"""  # Ray's own record of every actor of the cluster and its node (the GCS: no dashboard needed)
NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
print(json.dumps([n["NodeID"] for n in ray.nodes() if n["Alive"]]))
"""


def _ray(code: str, address: str) -> list:
    """Run ``code`` as a Ray driver of the cluster at ``address``; its printed JSON."""
    out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A two-node Ray cluster on loopback (a head and a worker node, one CPU each); its head's address.

    Its processes carry a mark of their own and are killed by it afterwards (``ray stop`` would stop
    every Ray on the machine)."""
    mark, port = secrets.token_hex(8), free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, RUN_MARK: mark, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_cli = str(Path(sys.executable).parent / "ray")
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    head = [ray_cli, "start", "--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", temp]
    try:
        subprocess.run([*head, *common], env=env, check=True, capture_output=True, timeout=180)
        address = f"127.0.0.1:{port}"
        subprocess.run([ray_cli, "start", "--address", address, *common], env=env, check=True, capture_output=True)
        yield address
    finally:
        for proc in marked_processes(mark):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def test_two_hundred_virtual_clients_sample_twenty_a_round_on_both_nodes_of_a_ray_cluster(
    ray_cluster: str, imdb_dir: Path, tmp_path: Path
) -> None:
    nodes = _ray(NODES, ray_cluster)
    assert len(nodes) == 2, nodes
    source = imdb_sample(imdb_dir, tmp_path / "imdb", {"train": 3000, "test": 500})
    settings = ["max-steps=1", "batch-size=16", "max-length=32", "eval-rows=64", "local-eval-rows=16"]
    settings += [f"fraction-train={SAMPLED / CLIENTS}", "node-wait-timeout=120"]
    args = ["--backend", "simulation", "--ray-address", ray_cluster, "--model", "tiny", "--clients", str(CLIENTS)]
    args += ["--rounds", str(ROUNDS), "--metrics-port", "0", "--retries", "0", "--out", str(tmp_path / "results")]
    args += ["--shards-dir", str(tmp_path / "shards"), "--data-source", str(source)]
    for setting in settings:
        args += ["--set", setting]
    run = orchestrate(*args, env={"FEDIMDB_NUM_PARTITIONS": str(CLIENTS)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"the Ray cluster at {ray_cluster}" in run.stdout + run.stderr
    assert not run.leftovers(), f"processes of the run outlived orchestrate.py: {run.leftovers()}"

    (run_dir,) = (exp / "repeat-0" for exp in (tmp_path / "results").iterdir())
    verify_run(run_dir)
    rounds = read_csv(run_dir / ROUNDS_FILE)
    assert [(r["clients_sampled"], r["clients_participating"]) for r in rounds] == [(str(SAMPLED),) * 2] * ROUNDS
    trained = [c for c in read_csv(run_dir / CLIENTS_FILE) if c["train_steps"]]  # the others only evaluated
    sampled = [{int(c["partition_id"]) for c in trained if c["round"] == str(k)} for k in range(1, ROUNDS + 1)]
    assert all(len(s) == SAMPLED and s <= set(range(CLIENTS)) for s in sampled), sampled
    assert sampled[0] != sampled[1], "both rounds sampled the same clients"
    assert max(sampled[0] | sampled[1]) >= SAMPLED, "only the first partitions were ever sampled"
    used = {node for name, node in _ray(ACTOR_NODES, ray_cluster) if name == CLIENT_ACTOR}
    assert used == set(nodes), f"the clients' actors ran on {len(used)} of the cluster's 2 nodes"
