"""Differential privacy through real Flower processes: ``dp = client-fixed`` on the simulation backend, tiny model,
every client's returned weights archived. The epsilon in rounds.csv must rise every round as Flower's accountant
composes it; every archived update (what entered aggregation) must be within the clipping norm; and each global model
must be the plain mean of those updates plus Gaussian noise of the stated deviation. The same on Messages, server-side
clipping and a spent budget included: tests/test_privacy.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedimdb.artifacts import ROUNDS_FILE, client_weights_name, read_csv, round_weights_name, verify_run
from fedimdb.config import DP_CLIENT_FIXED, RunConfig
from fedimdb.inspect.report import read_run, render_text
from fedimdb.privacy import PrivacyPlan
from fedimdb.run_record import read_run_record
from fedimdb.summary import SUMMARY_CSV
from tests.conftest import local_run_args, orchestrate

pytestmark = pytest.mark.slow
ROUNDS, CLIENTS, NOISE, CLIP, TARGET = 3, 2, 1.0, 0.01, 10.0
DP = [
    f"dp={DP_CLIENT_FIXED}",
    f"dp-noise-multiplier={NOISE}",
    f"dp-clipping-norm={CLIP}",
    f"dp-target-epsilon={TARGET}",
]
SETTINGS = ["max-steps=2", "max-length=32", "batch-size=16", "eval-rows=64", "local-eval-rows=16"]
SETTINGS += ["min-reply-fraction=1", "archive-client-weights=true", *DP]


@pytest.fixture(scope="module")
def run_dir(shards: Path, imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one repeat's folder, verified."""
    out = tmp_path_factory.mktemp("dp") / "results"
    args = local_run_args(out, shards, imdb_dir, clients=CLIENTS, rounds=ROUNDS, settings=SETTINGS)
    run = orchestrate(*args, "--backend", "simulation", "--retries", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    (exp,) = out.iterdir()
    verify_run(exp / "repeat-0")
    return exp / "repeat-0"


def _model(run_dir: Path, name: str) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in load_file(run_dir / name).items()}


def test_epsilon_rises_every_round_as_flowers_accountant_composes_it(run_dir: Path) -> None:
    plan = PrivacyPlan.of(RunConfig(num_clients=CLIENTS, dp=DP_CLIENT_FIXED, min_reply_fraction=1.0))
    assert plan is not None
    epsilons = [float(r["epsilon"]) for r in read_csv(run_dir / ROUNDS_FILE)]
    assert epsilons == pytest.approx([plan.epsilon_after(k) for k in range(1, ROUNDS + 1)], rel=1e-9)
    assert epsilons == sorted(set(epsilons))
    privacy = read_run_record(run_dir / "run.json").privacy
    assert privacy is not None and privacy.mechanism == DP_CLIENT_FIXED and privacy.target_epsilon == TARGET
    assert (privacy.epsilon, privacy.delta, privacy.releases) == (epsilons[-1], 1e-5, ROUNDS)
    summary = read_csv(run_dir.parent / SUMMARY_CSV)
    assert [float(r["mean"]) for r in summary if r["metric"] == "epsilon"] == pytest.approx(epsilons)
    assert f"differential privacy: client-fixed, epsilon {epsilons[-1]:.4g} at delta 1e-05 after 3 rounds" in (
        render_text(read_run(run_dir))
    )


def test_each_update_that_entered_aggregation_is_within_the_clipping_norm(run_dir: Path) -> None:
    norms = []
    for k in range(1, ROUNDS + 1):
        before = _model(run_dir, round_weights_name(k - 1))
        for partition in range(CLIENTS):
            client = _model(run_dir, client_weights_name(k, partition))
            norms.append(np.sqrt(sum(np.sum((client[n] - before[n]) ** 2) for n in client)))
    assert max(norms) <= CLIP * (1 + 1e-4), norms
    assert min(norms) > 0.99 * CLIP, f"every update was clipped (they are larger than {CLIP}): {norms}"


def test_the_global_model_is_the_mean_of_the_updates_plus_noise_of_the_stated_deviation(run_dir: Path) -> None:
    """Flower adds N(0, (noise x clip / sampled)^2) to every element of the mean."""
    for k in range(1, ROUNDS + 1):
        after = _model(run_dir, round_weights_name(k))
        clients = [_model(run_dir, client_weights_name(k, p)) for p in range(CLIENTS)]
        noise = np.concatenate([(after[n] - sum(c[n] for c in clients) / CLIENTS).ravel() for n in clients[0]])
        assert noise.size > 40_000
        assert noise.std() == pytest.approx(NOISE * CLIP / CLIENTS, rel=0.03), k
        assert abs(noise.mean()) < 4 * noise.std() / np.sqrt(noise.size)
        assert np.abs(noise).max() > 3 * noise.std()  # Gaussian tails, not a rounding error
