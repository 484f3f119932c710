"""Which Flower strategy a run uses, and with which arguments.

:func:`make_strategy` builds the Flower strategy named in the run config (``strategy``), unchanged:
it samples the clients and aggregates their replies. The round loop around it (waiting, screening,
resending, recording) is server/loop.py's.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from fedimdb.config import RunConfig
from server.loop import RoundPolicy

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
}


def strategy_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Keyword arguments of the Flower strategy named by ``cfg.strategy``.

    Flower's sampling waits without limit until ``min_available_nodes`` are online, so these are
    the fewest clients a round can succeed with: with a client gone, later rounds go on with the
    others (the :class:`RoundPolicy` decides whether that is enough; all clients are awaited, with
    a timeout, before round 1).
    """
    least = RoundPolicy.of(cfg).needed(cfg.num_clients)
    kwargs: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": max(1, min(least, math.ceil(cfg.fraction_train * cfg.num_clients))),
        "min_evaluate_nodes": max(1, min(least, math.ceil(cfg.fraction_evaluate * cfg.num_clients))),
        "min_available_nodes": least,
    }
    if cfg.strategy == "fedprox":
        kwargs["proximal_mu"] = cfg.proximal_mu
    elif cfg.strategy == "fedavgm":
        kwargs["server_momentum"] = cfg.server_momentum
    elif cfg.strategy in ("fedadam", "fedyogi", "fedadagrad"):
        kwargs["eta"] = cfg.server_learning_rate
    elif cfg.strategy == "fedtrimmedavg":
        kwargs["beta"] = cfg.trimmed_beta
    elif cfg.strategy == "krum":
        kwargs["num_malicious_nodes"] = cfg.krum_malicious_nodes
    return kwargs


def make_strategy(cfg: RunConfig) -> Strategy:
    """Flower's strategy named by ``cfg.strategy``, with the run's arguments."""
    return STRATEGY_CLASSES[cfg.strategy](**strategy_kwargs(cfg))
