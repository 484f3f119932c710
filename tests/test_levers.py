"""The time-to-accuracy levers' options: the client learning rate across rounds, and FedAvgM's momentum."""

from __future__ import annotations

import itertools

import pytest
from flwr.serverapp.strategy import FedAvgM

from fedimdb.config import RunConfig
from fedimdb.training import scheduled_learning_rate
from server.strategy import STRATEGY_CLASSES, strategy_kwargs


def test_the_cosine_schedule_starts_at_the_rate_and_ends_at_a_tenth() -> None:
    rates = [scheduled_learning_rate(1e-4, "cosine", r, 10) for r in range(1, 11)]
    assert rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert scheduled_learning_rate(1e-4, "constant", 7, 10) == 1e-4
    assert scheduled_learning_rate(1e-4, "cosine", 1, 1) == 1e-4


def test_fedavgm_gets_its_server_momentum() -> None:
    cfg = RunConfig(strategy="fedavgm", server_momentum=0.5, num_clients=4)
    strategy = STRATEGY_CLASSES[cfg.strategy](**strategy_kwargs(cfg))
    assert isinstance(strategy, FedAvgM)
    assert strategy.server_momentum == 0.5 and strategy.server_learning_rate == 1.0
