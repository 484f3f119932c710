"""Which Flower strategy a run uses, and with which arguments.

:func:`make_strategy` builds the Flower strategy named in the run config (``strategy``), unchanged:
it samples the clients and aggregates their replies. With ``dp`` on, Flower's own differential-privacy
wrapper goes around it, with Flower's RDP accountant (fedimdb/privacy.py), and the strategy averages
the clipped updates with equal weights, as the noise's calibration assumes. The round loop around it
(waiting, screening, resending, recording) is server/loop.py's.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
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

from fedimdb.config import DP_SERVER_FIXED, RunConfig
from fedimdb.privacy import PrivacyPlan
from fedimdb.protocol import UNIFORM_WEIGHT
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
DP_STRATEGY_CLASSES: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedprox": FedProx}
"""The strategies differential privacy wraps (fedimdb/config.py's DP_STRATEGIES): those whose aggregation is
FedAvg's, as Flower's accountant requires."""


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


def sample_size(cfg: RunConfig, kwargs: dict[str, Any]) -> int:
    """The clients a round samples with every client online, as Flower's ``configure_train`` counts them."""
    return max(int(cfg.num_clients * cfg.fraction_train), kwargs["min_train_nodes"])


def make_strategy(cfg: RunConfig, releases: int = 0) -> Strategy:
    """Flower's strategy named by ``cfg.strategy``, with the run's arguments; with ``dp`` on, inside Flower's DP
    wrapper, whose accountant has ``releases`` rounds composed already (those of the run it continues)."""
    kwargs = strategy_kwargs(cfg)
    plan = PrivacyPlan.of(cfg, sample_size(cfg, kwargs))
    if plan is None:
        return STRATEGY_CLASSES[cfg.strategy](**kwargs)
    wrapper = (
        DifferentialPrivacyServerSideFixedClipping
        if cfg.dp == DP_SERVER_FIXED
        else DifferentialPrivacyClientSideFixedClipping
    )
    return wrapper(
        DP_STRATEGY_CLASSES[cfg.strategy](**kwargs, weighted_by_key=UNIFORM_WEIGHT),
        cfg.dp_noise_multiplier,
        cfg.dp_clipping_norm,
        plan.sampled,
        accountant=plan.accountant(releases),
    )
