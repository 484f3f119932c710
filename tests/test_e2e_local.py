"""The real thing on loopback: flower-superlink + 3 flower-supernode processes over gRPC,
submitted with ``flwr run`` by ``orchestrate.py --backend local``, tiny model, 2 rounds on
unequal (Dirichlet) shards. (The same seed on ``--backend simulation``: tests/test_continue_local.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedimdb.artifacts import LOGS_DIR, read_csv, read_json, verify_run
from fedimdb.data import SERVER_DIR, read_split
from fedimdb.deploy.flwr_cli import FLWR_RUN_FILE
from fedimdb.deploy.local import FORKSERVER_LOG
from fedimdb.model import load_global_model, load_model
from fedimdb.quantize import error_bound
from fedimdb.training import evaluate
from tests.conftest import E2E_CLIENTS, E2E_ROUNDS, TIMING_COLUMNS

pytestmark = pytest.mark.slow  # every test reads the four real runs of the e2e_runs fixture
EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
QUERY = "bert.encoder.layer.0.attention.self.query.weight"


def _run_dirs(results: Path) -> list[Path]:
    return sorted((exp / "repeat-0" for exp in results.iterdir()), key=lambda p: read_json(p / "run.json")["started"])


@pytest.fixture(scope="module")
def run_dir(e2e_runs: dict) -> Path:
    for run in e2e_runs["runs"]:
        assert run.returncode == 0, run.stderr[-5000:]
    return _run_dirs(e2e_runs["results"])[0]


def test_local_run_writes_verified_artifact_set(run_dir: Path) -> None:
    meta = verify_run(run_dir)
    assert meta.status == "completed"
    assert meta.config["num-rounds"] == E2E_ROUNDS and meta.config["model"] == "tiny"
    assert [int(r["round"]) for r in read_csv(run_dir / "rounds.csv")] == list(range(1, E2E_ROUNDS + 1))
    clients = read_csv(run_dir / "clients.csv")
    assert len(clients) == E2E_CLIENTS * E2E_ROUNDS
    assert {(int(r["round"]), int(r["partition_id"])) for r in clients} == {
        (rnd, pid) for rnd in range(1, E2E_ROUNDS + 1) for pid in range(E2E_CLIENTS)
    }
    assert all(r["status"] == "ok" and int(r["num_examples"]) > 0 for r in clients)
    for rnd in range(E2E_ROUNDS + 1):
        assert f"weights/round-{rnd:03d}.safetensors" in meta.files
    assert (run_dir / "logs" / "serverapp.log").stat().st_size > 0


def test_tampered_artifact_fails_verification(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with open(copy / "clients.csv", "a") as fh:
        fh.write("tampered\n")
    with pytest.raises(Exception, match=r"clients\.csv: sha256 mismatch"):
        verify_run(copy)


def test_supernodes_talk_grpc_to_the_fleet_port(e2e_runs: dict, run_dir: Path) -> None:
    samples = e2e_runs["watch"].samples
    assert samples, "never saw the SuperLink and all SuperNodes running"
    cmd, port = samples[0]["superlink_cmd"], samples[0]["fleet_port"]
    assert cmd[cmd.index("--fleet-api-type") + 1] == "grpc-rere"
    for node in samples[0]["nodes"]:
        assert "--grpc-rere" in node["cmd"]
        assert node["cmd"][node["cmd"].index("--superlink") + 1].endswith(f":{port}")
    # Mid-run, the SuperLink listens on the Fleet port and every SuperNode holds a connection to it.
    assert any(s["connected"] for s in samples), f"no sample with all SuperNodes connected to {port}: {samples[-1]}"


def test_fleet_port_speaks_grpc(e2e_runs: dict) -> None:
    """While the run went on, with every SuperNode connected, a gRPC channel to its Fleet port got ready."""
    probed = [s for s in e2e_runs["watch"].samples if "fleet_grpc" in s]
    assert probed, "the Fleet port was never probed: never saw all SuperNodes connected"
    assert probed[0]["fleet_grpc"] == "ready"
    assert probed[0]["fleet_tls"], "the default is TLS: the channel trusted the run's CA"


def test_round_one_is_the_example_weighted_mean_of_client_weights(run_dir: Path) -> None:
    clients = [r for r in read_csv(run_dir / "clients.csv") if r["round"] == "1"]
    weights = {
        int(r["partition_id"]): load_file(run_dir / f"weights/clients/round-001-client-{r['partition_id']}.safetensors")
        for r in clients
    }
    counts = {int(r["partition_id"]): int(r["num_examples"]) for r in clients}
    assert len(set(counts.values())) == len(counts), f"equal example counts {counts}: a plain mean would pass"
    global_1 = load_file(run_dir / "weights/round-001.safetensors")
    global_0 = load_file(run_dir / "weights/round-000.safetensors")
    total = sum(counts.values())
    moved = 0
    for name, tensor in global_1.items():
        expected = sum(weights[p][name].double() * counts[p] for p in weights) / total
        torch.testing.assert_close(tensor.double(), expected, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(tensor, global_0[name]))
    assert moved > 0, "round 1 equals round 0: nothing was trained"
    a, b = weights[0], weights[1]
    assert any(not torch.equal(a[k], b[k]) for k in a), "clients returned identical weights: the mean proves nothing"


def test_same_seed_gives_identical_csvs_whatever_the_evaluation_schedule(e2e_runs: dict, run_dir: Path) -> None:
    """Evaluating inside the next train reply gives the numbers of Flower's separate evaluate messages, and
    the server's evaluation overlapped with the next round the numbers of the one after each round."""
    first, second = _run_dirs(e2e_runs["results"])
    configs = [read_json(d / "run.json")["config"] for d in (first, second)]
    assert [(c["local-eval"], c["overlap-central-eval"]) for c in configs] == [
        ("with-train", False),
        ("separate", True),
    ]
    clients = read_csv(first / "clients.csv")
    assert all(r["local_eval_examples"] not in ("", "0") for r in clients), "a round's global model went unevaluated"
    traffic = ("bytes_sent", "bytes_received")  # Flower's evaluate messages carry the model out once more
    for name in ("rounds.csv", "clients.csv"):
        rows = [
            [{k: v for k, v in r.items() if k not in (*TIMING_COLUMNS, *traffic)} for r in read_csv(d / name)]
            for d in (first, second)
        ]
        assert rows[0] == rows[1], name
    sent, received = ([[int(r[k]) for r in read_csv(d / "rounds.csv")] for d in (first, second)] for k in traffic)
    assert sent[1] == [2 * b for b in sent[0]] and received[1] == received[0], (sent, received)


def _traffic(run: Path) -> float:
    return float(read_json(run / LOGS_DIR / FLWR_RUN_FILE)["network-traffic"]["total-bytes"])


def test_int8_transport_stays_within_its_bound_through_real_flower(e2e_runs: dict, run_dir: Path) -> None:
    """Round 1 of the int8 run is round 1 of the float32 run, each tensor within the bound of the clients' updates.

    Round 1 starts from the initial model, which int8 sends exactly (a zero difference); the clients
    train the same steps as in the float32 run (same seed) and their updates come back within
    half a step each, so FedAvg's weighted mean of them does too.
    """
    (int8_dir,) = _run_dirs(e2e_runs["int8_results"])
    verify_run(int8_dir)
    assert read_json(int8_dir / "run.json")["config"]["weight-transport"] == "int8"
    start = load_file(run_dir / "weights/round-000.safetensors")
    clients = [load_file(path) for path in sorted((run_dir / "weights/clients").glob("round-001-client-*"))]
    full, int8 = (
        load_file(run_dir / "weights/round-001.safetensors"),
        load_file(int8_dir / "weights/round-001.safetensors"),
    )
    for name, value in full.items():
        if not value.is_floating_point():
            assert torch.equal(int8[name], value)
            continue
        bound = max(error_bound(c[name] - start[name]) for c in clients) + 1e-6 * float(value.abs().max())
        assert float((int8[name] - value).abs().max()) <= bound, name
    # measured 0.46: tiny's tensors are small, so each one's map and Flower's framing weigh (minilm: bench.tta)
    assert _traffic(int8_dir) < 0.5 * _traffic(run_dir)


def test_lora_sends_a_sliver_and_archives_whole_models(e2e_runs: dict, run_dir: Path) -> None:
    """fine-tune=lora through real Flower: every archived round is the whole model (adapters merged), which
    loads strictly and scores on the held-out rows what the server measured with the adapters; the word
    embeddings stay as loaded; only the adapters and the head travel."""
    (lora_dir,) = _run_dirs(e2e_runs["lora_results"])
    meta = verify_run(lora_dir)
    config = meta.config
    assert config["fine-tune"] == "lora"
    held_out = read_split(e2e_runs["shards"] / SERVER_DIR, "test").head(config["eval-rows"])
    losses = [(meta.initial_evaluation or {})["loss"]] + [
        float(r["central_loss"]) for r in read_csv(lora_dir / "rounds.csv")
    ]
    _, tokenizer = load_model("tiny", 0)
    options = {"batch_size": config["batch-size"], "max_length": config["max-length"], "device": torch.device("cpu")}
    models = [load_global_model(lora_dir, server_round=k) for k in range(E2E_ROUNDS + 1)]  # strict: whole models
    for server_round, model in enumerate(models):
        assert not any("lora" in name for name in model.state_dict())
        got = evaluate(model, tokenizer, held_out, **options)
        assert abs(got.loss - losses[server_round]) <= 1e-4, (server_round, got.loss, losses)
    first, last = (m.state_dict() for m in (models[0], models[-1]))
    assert torch.equal(first[EMBEDDINGS], last[EMBEDDINGS])
    assert not torch.equal(first[QUERY], last[QUERY]), "the merged adapters moved the attention weights"
    assert _traffic(lora_dir) < 0.5 * _traffic(run_dir)


def test_one_fork_server_forks_every_supernodes_clientapps(run_dir: Path) -> None:
    """The local backend's SuperNodes share one fork server: its log names a forked process for every train
    message of every node, and no node's log has a fork server of its own."""
    logs = run_dir / LOGS_DIR
    assert (logs / FORKSERVER_LOG).read_text().count("fork server: task process") >= E2E_CLIENTS * E2E_ROUNDS
    for k in range(E2E_CLIENTS):
        assert "fork server" not in (logs / f"supernode-{k}.log").read_text(), k


def test_weights_load_back_with_from_pretrained(run_dir: Path) -> None:
    final = load_global_model(run_dir)
    after_round_1 = load_global_model(run_dir, server_round=1)
    state = load_file(run_dir / "weights/round-002.safetensors")
    for name, tensor in final.state_dict().items():
        torch.testing.assert_close(tensor, state[name])
    assert any(not torch.equal(after_round_1.state_dict()[k], state[k]) for k in state)


def test_no_flower_process_outlives_the_run(e2e_runs: dict) -> None:
    for run in e2e_runs["runs"]:
        left = run.leftovers()
        assert not left, f"processes of the run outlived orchestrate.py: {left}"
