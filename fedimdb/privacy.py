"""Differential privacy as a run's settings: Flower's RDP accountant, the epsilon a run plans and spends.

The mechanism is Flower's own (server/strategy.py wraps the strategy in
``DifferentialPrivacy{Server,Client}SideFixedClipping``); this module only says what it costs. Every
round is one release of the Gaussian mechanism on the sum of the sampled clients' clipped updates
(noise ``dp-noise-multiplier`` x ``dp-clipping-norm``), composed by Flower's ``RdpAccountant``
(Google's dp-accounting) at client level (neighbouring federations add or remove one client) and
without amplification by sampling, which Flower's fixed-clipping accounting requires: the epsilon of
a run is therefore that of ``num-rounds`` releases, whatever ``fraction-train`` samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedimdb.config import DP_OFF, ConfigError, RunConfig

if TYPE_CHECKING:
    from flwr.serverapp import RdpAccountant
    from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

INSTALL_DP = "pip install 'fedimdb[dp]' (dp-accounting, the backend of Flower's accountant)"


@dataclass(frozen=True)
class PrivacyPlan:
    """What one round releases, and the accounting it is composed in.

    Parameters
    ----------
    noise_multiplier : float
        The noise's standard deviation on the sum of the clipped updates, in clipping norms.
    delta : float
        The delta at which epsilon is reported.
    population : int
        The clients of the federation (``num-clients``).
    sampled : int
        The clients sampled each round (no amplification: it does not change epsilon).
    target_epsilon : float | None
        The most epsilon the run may spend (None: no limit).
    """

    noise_multiplier: float
    delta: float
    population: int
    sampled: int
    target_epsilon: float | None = None

    @classmethod
    def of(cls, cfg: RunConfig, sampled: int | None = None) -> PrivacyPlan | None:
        """The plan of a run config (None with ``dp = off``); ``sampled`` defaults to every client."""
        if cfg.dp == DP_OFF:
            return None
        target = cfg.dp_target_epsilon or None
        return cls(cfg.dp_noise_multiplier, cfg.dp_delta, cfg.num_clients, sampled or cfg.num_clients, target)

    def event(self) -> GaussianPrivacyEvent:
        """One round's release."""
        from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

        return GaussianPrivacyEvent(self.noise_multiplier, self.sampled, self.population)

    def accountant(self, releases: int = 0) -> RdpAccountant:
        """Flower's RDP accountant for this plan, ``releases`` rounds already composed (a continued run's)."""
        try:
            from flwr.serverapp import PrivacyConfig, RdpAccountant
            from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod
        except ImportError as exc:
            raise ConfigError(f"dp: differential privacy needs Flower's accountant ({exc}): {INSTALL_DP}") from None
        accountant = RdpAccountant(
            PrivacyConfig(
                self.delta,
                self.population,
                NeighboringRelation.ADD_OR_REMOVE_ONE,
                SamplingMethod.NO_AMPLIFICATION,
                self.target_epsilon,
            )
        )
        if releases:
            accountant.compose(self.event(), releases)
        return accountant

    def epsilon_after(self, rounds: int) -> float:
        """The epsilon spent after ``rounds`` rounds, at this plan's delta."""
        return self.accountant(rounds).get_epsilon(self.delta)

    def rounds_within(self, epsilon: float, most: int) -> int:
        """The most rounds (up to ``most``) whose epsilon stays within ``epsilon`` (epsilon grows with rounds)."""
        low, high = 0, most
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.epsilon_after(mid) <= epsilon else (low, mid - 1)
        return low


def noise_for(epsilon: float, rounds: int, delta: float, population: int) -> float:
    """The smallest noise multiplier (to 3 significant digits, rounded up) whose ``rounds`` rounds spend at most
    ``epsilon`` at ``delta``: epsilon falls as the noise rises, so a bisection on its logarithm finds it."""
    low, high = 1e-2, 1e4
    while high / low > 1.0005:
        mid = math.sqrt(low * high)
        if PrivacyPlan(mid, delta, population, population).epsilon_after(rounds) > epsilon:
            low = mid
        else:
            high = mid
    digits = 2 - math.floor(math.log10(high))
    return math.ceil(high * 10**digits) / 10**digits


def check_budget(cfg: RunConfig) -> None:
    """ConfigError, before anything starts, when the planned rounds would spend more than the target epsilon."""
    plan = PrivacyPlan.of(cfg)
    if plan is None or plan.target_epsilon is None:
        return
    planned = plan.epsilon_after(cfg.num_rounds)
    if planned > plan.target_epsilon:
        fits = plan.rounds_within(plan.target_epsilon, cfg.num_rounds)
        fewer = f"lower num-rounds to {fits}, " if fits else ""
        noise = noise_for(plan.target_epsilon, cfg.num_rounds, plan.delta, plan.population)
        raise ConfigError(
            f"dp-target-epsilon={plan.target_epsilon:g}: {cfg.num_rounds} rounds with dp-noise-multiplier="
            f"{plan.noise_multiplier:g} would spend epsilon {planned:.3f} at delta {plan.delta:g}; {fewer}raise "
            f"dp-noise-multiplier to {noise:g}, or raise dp-target-epsilon"
        )
