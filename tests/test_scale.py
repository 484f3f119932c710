"""Scale on the simulation backend: 200 virtual clients of the tiny model, 20 sampled a round, complete
through ``orchestrate.py --backend simulation`` (Flower's Simulation Engine on Ray) with every artifact
verified. The local backend stops at about 30 client nodes on this machine (docs/benchmarks.md, "Scale");
the figures of larger runs: ``python -m bench.scale --backend simulation``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedimdb.artifacts import CLIENTS_FILE, ROUNDS_FILE, read_csv, verify_run
from tests.conftest import imdb_sample, orchestrate

pytestmark = pytest.mark.slow
CLIENTS, SAMPLED, ROUNDS = 200, 20, 2


def test_two_hundred_virtual_clients_complete_sampling_twenty_a_round(imdb_dir: Path, tmp_path: Path) -> None:
    source = imdb_sample(imdb_dir, tmp_path / "imdb", {"train": 3000, "test": 500})
    settings = ["max-steps=1", "batch-size=16", "max-length=32", "eval-rows=64", "local-eval-rows=16"]
    settings += [f"fraction-train={SAMPLED / CLIENTS}", "node-wait-timeout=120"]
    args = ["--backend", "simulation", "--model", "tiny", "--clients", str(CLIENTS), "--rounds", str(ROUNDS)]
    args += ["--metrics-port", "0", "--retries", "0", "--out", str(tmp_path / "results")]
    args += ["--shards-dir", str(tmp_path / "shards"), "--data-source", str(source)]
    for setting in settings:
        args += ["--set", setting]
    run = orchestrate(*args, env={"FEDIMDB_NUM_PARTITIONS": str(CLIENTS)})
    assert run.returncode == 0, run.stderr[-3000:]
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
