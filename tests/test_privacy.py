"""Differential privacy (fedimdb/privacy.py, server/strategy.py, client/client_app.py's clipping_mod) on Flower
Messages, without a network: Flower's own wrappers and accountant in fedimdb's round loop, milliseconds a test.
The same through real Flower processes: tests/test_privacy_run.py."""

from __future__ import annotations

from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAvg
from flwr.supercore.differential_privacy import compute_adaptive_noise_params

from client.client_app import clipping_mod
from fedimdb.config import (
    DP_ADAPTIVE,
    DP_CLIENT_FIXED,
    DP_SERVER_FIXED,
    DP_STRATEGIES,
    TRANSPORT_DTYPES,
    ConfigError,
    RunConfig,
)
from fedimdb.metrics.server import ServerMetrics
from fedimdb.privacy import PrivacyPlan, check_budget, noise_for
from fedimdb.run_record import Privacy
from server.loop import Federation, RoundPolicy
from server.recorder import Recorder
from server.records import RoundLog
from server.server_app import privacy_record
from server.strategy import DP_STRATEGY_CLASSES, STRATEGY_CLASSES, make_strategy
from server.wire import Wire
from tests.instant_grid import PARTITIONS, InstantGrid, Node, OneTensorRun, honest, wire_client

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("task_identity")]
SIZE = 40_000  # elements of the model: the noise's standard deviation is estimated from them


def dp_config(mode: str = DP_SERVER_FIXED, **values: Any) -> RunConfig:
    return RunConfig(num_clients=3, dp=mode, min_reply_fraction=1.0, **values)


@pytest.mark.parametrize(("noise", "rounds", "delta"), [(1.0, 10, 1e-5), (0.7, 3, 1e-3), (4.0, 100, 1e-6)])
def test_the_accountants_epsilon_is_dp_accountings_own(noise: float, rounds: int, delta: float) -> None:
    """A round is the Gaussian mechanism on the sum of updates clipped to C, with noise noise x C: one GaussianDpEvent."""
    plan = PrivacyPlan(noise, delta, population=10, sampled=10)
    theirs = dp_accounting.rdp.RdpAccountant()
    theirs.compose(dp_accounting.GaussianDpEvent(noise), rounds)
    assert plan.epsilon_after(rounds) == pytest.approx(theirs.get_epsilon(delta), rel=1e-9)


def test_a_target_epsilon_the_planned_rounds_exceed_is_refused_naming_what_fits() -> None:
    cfg = dp_config(num_rounds=10, dp_target_epsilon=8.0)
    with pytest.raises(ConfigError, match=r"would spend epsilon 19\.054 at delta 1e-05; lower num-rounds to 2"):
        check_budget(cfg)
    check_budget(dp_config(num_rounds=2, dp_target_epsilon=8.0))
    with pytest.raises(ConfigError, match=r"epsilon 4\.729 .*; raise dp-noise-multiplier to 4\.05,"):  # 0 rounds fit
        check_budget(dp_config(num_rounds=1, dp_target_epsilon=1.0))


@pytest.mark.parametrize(("epsilon", "rounds"), [(1.0, 10), (8.0, 6), (19.0, 10)])
def test_noise_for_is_the_smallest_noise_multiplier_within_the_target(epsilon: float, rounds: int) -> None:
    z = noise_for(epsilon, rounds, 1e-5, 10)
    assert PrivacyPlan(z, 1e-5, 10, 10).epsilon_after(rounds) <= epsilon
    assert PrivacyPlan(z * 0.99, 1e-5, 10, 10).epsilon_after(rounds) > epsilon


def test_dp_wraps_exactly_the_strategies_that_aggregate_with_fedavgs_mean() -> None:
    fedavg_mean = {n for n, c in STRATEGY_CLASSES.items() if c.aggregate_train is FedAvg.aggregate_train}
    assert set(DP_STRATEGIES) == set(DP_STRATEGY_CLASSES) == fedavg_mean
    assert all(STRATEGY_CLASSES[n] is c for n, c in DP_STRATEGY_CLASSES.items())


class PrivateFederation(OneTensorRun):
    """A differentially private federation over an InstantGrid, recorded by a real Recorder."""

    def __init__(self, cfg: RunConfig, nodes: dict[int, Node], wire: Wire | None = None) -> None:
        self.cfg, self.log, self.privacy = cfg, RoundLog(), privacy_record(cfg)
        self.strategy, self.metrics = make_strategy(cfg), ServerMetrics(7, cfg)
        recorder = Recorder(self.log, self.metrics, privacy=self.privacy)
        self.grid = InstantGrid(nodes)
        policy = RoundPolicy(3, 1.0, 1, 60, 0)
        self.federation = Federation(self.strategy, self.grid, recorder, policy, wire or Wire())
        self.size = SIZE

    def epsilons(self) -> list[float]:
        return [row["epsilon"] for row in self.log.rounds]


def _gauge(metrics: ServerMetrics) -> float:
    """fedimdb_server_privacy_epsilon's value."""
    (sample,) = metrics.epsilon.collect()[0].samples
    return sample.value


def clipping_client(step: float, norms: list[float] | None = None) -> Node:
    """An honest client whose train handler is behind client_app's clipping_mod, as the ClientApp's is; the L2
    norms of the updates it sends go to ``norms``."""
    inner = honest(step=step)

    def answer(msg: Message) -> Message | None:
        if msg.metadata.message_type != "train":
            return inner(msg)
        reply = clipping_mod(msg, Context(1, 1, {}, {}, {}), lambda m, _: inner(m))
        sent, back = msg.content["arrays"]["w"].numpy(), reply.content["arrays"]["w"].numpy()  # type: ignore[index]
        if norms is not None:
            norms.append(float(np.linalg.norm(back - sent)))
        return reply

    return answer


@pytest.mark.parametrize("transport", TRANSPORT_DTYPES)
def test_server_side_clipping_adds_noise_of_the_stated_deviation_to_the_mean_of_clipped_updates(transport: str) -> None:
    """On every transport: the server clips the update it decodes, against the float32 global model."""
    cfg = dp_config(dp_noise_multiplier=1.0, dp_clipping_norm=2.0, weight_transport=transport)
    reference = {"w": torch.zeros(SIZE)}
    clients = {node: wire_client(0.5 * (node - 10), transport, reference) for node in PARTITIONS}
    run = PrivateFederation(cfg, clients, Wire(transport, reference))
    run(num_rounds=3)
    plan = PrivacyPlan.of(cfg)
    assert plan is not None
    assert run.epsilons() == pytest.approx([plan.epsilon_after(k) for k in (1, 2, 3)])
    assert run.privacy == Privacy(DP_SERVER_FIXED, 1.0, 2.0, 1e-5, None, run.epsilons()[-1], 3)
    assert _gauge(run.metrics) == run.epsilons()[-1] and _gauge(ServerMetrics(8, RunConfig())) == float("inf")
    # Each update (step x 1 in every element, norm step x sqrt(SIZE) > 2) is clipped to norm 2: the mean of the
    # clipped updates is 2 / sqrt(SIZE) in every element, and the rest is the noise: N(0, 1 x 2 / 3).
    for before, after in zip(run.models, run.models[1:], strict=False):
        noise = after - before - 2 / np.sqrt(SIZE)
        assert abs(noise.mean()) < 4 * (2 / 3) / np.sqrt(SIZE)
        assert noise.std() == pytest.approx(2 / 3, rel=0.03)


def test_client_side_clipping_clips_each_update_before_it_leaves_the_client() -> None:
    cfg = dp_config(DP_CLIENT_FIXED, dp_noise_multiplier=0.5, dp_clipping_norm=1.0)
    norms: list[float] = []
    run = PrivateFederation(cfg, {node: clipping_client(step=1.0, norms=norms) for node in PARTITIONS})
    run(num_rounds=2)
    assert norms == pytest.approx([1.0] * 6, rel=1e-5)  # from sqrt(SIZE) = 200 down to the clipping norm
    assert run.epsilons()[0] < run.epsilons()[1]
    noise = run.models[1] - run.models[0] - 1 / np.sqrt(SIZE)
    assert noise.std() == pytest.approx(0.5 / 3, rel=0.03)


def test_a_client_claiming_more_than_the_uniform_weight_is_refused_and_asked_again() -> None:
    """Under DP, FedAvg weights replies by uniform-weight: a client claiming more would count more than the
    noise is calibrated for (and Flower would raise on unequal weights)."""

    def heavy(msg: Message) -> Message | None:
        reply = honest()(msg)
        if reply is not None and msg.metadata.message_type == "train":
            reply.content["metrics"]["uniform-weight"] = 1000  # type: ignore[index]
        return reply

    trains: list[Message] = []

    def once_heavy(msg: Message) -> Message | None:
        trains.extend([msg] if msg.metadata.message_type == "train" else [])
        return (heavy if len(trains) == 1 else honest())(msg)

    run = PrivateFederation(dp_config(), {11: honest(), 12: once_heavy, 13: honest()})
    run(num_rounds=1)
    assert run.grid.sent("train") == [11, 12, 12, 13]
    assert run.log.rounds[0]["retries"] == 1 and len(run.epsilons()) == 1


def test_clipping_mod_clips_only_messages_that_carry_a_clipping_norm() -> None:
    model = ArrayRecord({"w": torch.zeros(100)})
    for config, norm in [({"clipping_norm": 1.5}, 1.5), ({}, 10.0)]:
        msg = Message(RecordDict({"arrays": model, "config": _config(config)}), dst_node_id=11, message_type="train")
        msg.metadata.__dict__["_message_id"] = "m"
        norms: list[float] = []
        clipping_client(step=1.0, norms=norms)(msg)
        assert norms == pytest.approx([norm], rel=1e-5)


def _config(values: dict[str, float]) -> Any:
    from flwr.app import ConfigRecord

    return ConfigRecord({"server-round": 1, **values})


def test_a_spent_budget_ends_the_run_after_the_last_round_that_fits() -> None:
    """The planned rounds are refused before they start (check_budget); should the budget run out anyway, Flower
    refuses the round that would exceed it and the loop ends the run cleanly after the one before."""
    cfg = dp_config(dp_target_epsilon=8.0)
    run = PrivateFederation(cfg, {node: honest() for node in PARTITIONS})
    result = run(num_rounds=4)
    assert len(run.epsilons()) == 2 and len(run.models) == 3  # rounds 0, 1, 2
    np.testing.assert_array_equal(result.arrays["w"].numpy(), run.models[-1])
    assert run.privacy is not None and run.privacy.releases == 2
    assert run.privacy.stopped and run.privacy.stopped.startswith("round 3 not run: The next private release")
    assert run.grid.sent("train") == [11, 11, 12, 12, 13, 13]


@pytest.mark.parametrize("mode", DP_ADAPTIVE)
def test_adaptive_clipping_is_refused_with_the_reason(mode: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"dp={mode}: not offered: Flower 1\.39's adaptive clipping .*#adaptive-clipping"
    ):
        RunConfig.from_mapping({"dp": mode, "min-reply-fraction": 1.0})


def test_flowers_adaptive_clipping_shrinks_a_norm_that_clips_every_update_and_noises_for_the_shrunk_norm() -> None:
    """Why adaptive clipping is refused (docs/privacy.md#adaptive-clipping), pinned on Flower 1.39's own wrapper:
    when every update is clipped the norm should grow towards the updates' target quantile (Andrew et al. 2021;
    TF Privacy's quantile estimator), but Flower's shrinks it, and the round's noise is drawn for the shrunk norm,
    not for the norm the updates were clipped to. Should Flower fix either, this fails: offer adaptive clipping."""
    clients, noise = 4, 0.3  # Flower's clipped-count deviation: clients / 20 = 0.2, and noise must be < 2 x 0.2
    np.random.seed(0)
    dp = DifferentialPrivacyServerSideAdaptiveClipping(FedAvg(), noise, clients, initial_clipping_norm=1.0)
    update_noise = compute_adaptive_noise_params(noise, clients, None)[1]
    dp.current_arrays = ArrayRecord([np.zeros(SIZE, dtype=np.float32)])
    replies = []
    for node in range(clients):
        sent = Message(RecordDict({"arrays": dp.current_arrays}), dst_node_id=node + 2, message_type="train")
        sent.metadata.__dict__["_message_id"] = f"m{node}"
        update = ArrayRecord([np.ones(SIZE, dtype=np.float32)])  # norm 200: clipped to 1
        replies.append(
            Message(RecordDict({"arrays": update, "metrics": MetricRecord({"num-examples": 1})}), reply_to=sent)
        )
    aggregate, _ = dp.aggregate_train(1, replies)
    assert aggregate is not None
    assert dp.clipping_norm < 0.95, "every update was clipped, yet the clipping norm did not shrink"
    drawn = (aggregate.to_numpy_ndarrays()[0] - 1 / np.sqrt(SIZE)).std()  # the mean of the clipped updates, less
    assert drawn == pytest.approx(update_noise * dp.clipping_norm / clients, rel=0.03)
    assert drawn < 0.97 * update_noise * 1.0 / clients, "noised for the norm the updates were clipped to"
