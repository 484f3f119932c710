"""SecAgg+ through real Flower processes: one local federation (3 SuperNodes, tiny model, 2 rounds), a plain
FedAvg run and a securely aggregated run of the same seed, one after the other. Round 1's clients train alike
in both, so the secure run's round-1 global model must be the plain one within the quantisation bound; the
secure run keeps no client's weights, and says it was securely aggregated. On Messages: tests/test_secure.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedimdb.artifacts import CLIENT_UPDATES_FILE, CLIENTS_FILE, ROUNDS_FILE, WEIGHTS_DIR, read_csv, verify_run
from fedimdb.config import SECAGG_OFF, SECAGG_PLUS, RunConfig
from fedimdb.data import SERVER_DIR
from fedimdb.deploy import flwr_cli
from fedimdb.deploy.local import LocalFederation, process_env
from fedimdb.deploy.topology import LOCAL_CONNECTION
from fedimdb.inspect.report import read_run, render_text
from server.secure import error_bound
from tests.conftest import TIMING_COLUMNS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
CLIENTS, CLIP = 3, 0.1
SKIPPED = TIMING_COLUMNS | {"local_eval_loss", "local_eval_accuracy"}
SETTINGS = {
    "model": "tiny",
    "num-clients": CLIENTS,
    "num-rounds": 2,
    "max-steps": 2,
    "batch-size": 8,
    "eval-rows": 32,
    "local-eval-rows": 16,
    "seed": 7,
    "secagg-clipping-range": CLIP,
}


@pytest.fixture(scope="module")
def runs(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The plain run's and the secure run's folders, both on one local federation."""
    tmp = tmp_path_factory.mktemp("secure")
    env = process_env(RunConfig.from_mapping(SETTINGS), tmp / "flwr-home")
    logs: list[str] = []
    with LocalFederation(shards, CLIENTS, tmp / "logs", env) as fed:
        for mode in (SECAGG_OFF, SECAGG_PLUS):
            run = RunConfig.from_mapping({**SETTINGS, "secure-aggregation": mode}).as_dict()
            run.update({"held-out-dir": str(shards / SERVER_DIR), "output-dir": str(tmp / mode)})
            flwr_cli.run_to_completion(LOCAL_CONNECTION, run, fed.env, log=logs.append, check=fed.check_alive)
    assert any(f"aggregated with {SECAGG_PLUS}" in line for line in logs), logs
    return {mode: tmp / mode for mode in (SECAGG_OFF, SECAGG_PLUS)}


def test_the_secure_round_is_fedavgs_within_the_quantisation_bound(runs: dict[str, Path]) -> None:
    plain, secure = (load_file(runs[m] / WEIGHTS_DIR / "round-001.safetensors") for m in (SECAGG_OFF, SECAGG_PLUS))
    examples = [int(r["num_examples"]) for r in read_csv(runs[SECAGG_PLUS] / CLIENTS_FILE) if r["round"] == "1"]
    bound = error_bound(CLIP, SETTINGS["max-steps"] * SETTINGS["batch-size"], examples)
    worst = max(float((secure[k].double() - plain[k].double()).abs().max()) for k in plain)
    assert worst <= bound + 1e-7, (worst, bound)  # + float32 rounding of the two sums
    moved = max(
        float((plain[k] - load_file(runs[SECAGG_OFF] / WEIGHTS_DIR / "round-000.safetensors")[k]).abs().max())
        for k in plain
    )
    assert moved > 100 * bound, "the round changed the model by more than the bound"


def test_a_secure_run_keeps_each_clients_metrics_and_no_clients_weights(runs: dict[str, Path]) -> None:
    plain, secure = runs[SECAGG_OFF], runs[SECAGG_PLUS]
    meta = verify_run(secure)
    assert meta.config["secure-aggregation"] == SECAGG_PLUS
    assert not (secure / WEIGHTS_DIR / "clients").exists()
    assert read_csv(secure / CLIENT_UPDATES_FILE) == [] and read_csv(plain / CLIENT_UPDATES_FILE)

    def round_one(run_dir: Path) -> list[dict[str, str]]:
        """Round 1's training rows (its local evaluation is of round 1's model, in round 2: within the bound only)."""
        rows = read_csv(run_dir / CLIENTS_FILE)
        return [{k: v for k, v in r.items() if k not in SKIPPED} for r in rows if r["round"] == "1"]

    assert round_one(secure) == round_one(plain), "the clients trained alike and report the same"
    plain_bytes, secure_bytes = (int(read_csv(r / ROUNDS_FILE)[0]["bytes_received"]) for r in (plain, secure))
    assert secure_bytes > plain_bytes, "masked updates and key shares were counted"
    report = render_text(read_run(secure))
    assert f"secure aggregation: {SECAGG_PLUS} (the server held no client's update)" in report
    assert "outlier clients: not observable (secure aggregation)" in report
