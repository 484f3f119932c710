"""Statistics of weights and updates, for weight_stats.csv and client_updates.csv (pure torch, no I/O).

The global model of a round is described tensor by tensor, by layer group (embeddings, each encoder
layer, the classifier head, ...) and as a whole (:func:`weight_rows`); the clients' updates of a
round against the aggregated update (:func:`client_rows`), with robust z-scores that flag outliers.
Sums are taken per tensor with torch's vectorised float32 reductions (relative error ~1e-6) and
added up in Python floats: no flattened copy of a model is ever made.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

State = Mapping[str, torch.Tensor]
WEIGHT_STATS_COLUMNS = (
    "round",
    "scope",
    "name",
    "group",
    "numel",
    "l2_norm",
    "mean",
    "std",
    "min",
    "max",
    "zero_fraction",
    "nonfinite",
    "update_l2_norm",
    "relative_update",
)
CLIENT_UPDATE_COLUMNS = (
    "round",
    "partition_id",
    "num_examples",
    "example_share",
    "update_l2_norm",
    "cosine_to_aggregate",
    "distance_to_aggregate",
    "norm_z",
    "cosine_z",
    "outlier",
    "nonfinite",
)
TENSOR, GROUP, MODEL = "tensor", "group", "model"  # a weight_stats.csv row's scope
WHOLE_MODEL = "model"  # the name of the MODEL row
MAD_SCALE = 0.6745  # robust z = 0.6745 (x - median) / MAD (Iglewicz and Hoaglin)
MEAN_AD_SCALE = 0.7979  # the same from the mean absolute deviation, when the MAD is 0
_LAYER = re.compile(r"(?:^|\.)(layers?|h|block)\.(\d+)\.")


def layer_group(name: str) -> str:
    """The layer group of a tensor: ``embeddings``, ``layer.N`` for encoder layer N, ``classifier``, else its module.

    ``bert.encoder.layer.3.attention.self.query.weight`` -> ``layer.3``;
    ``bert.embeddings.word_embeddings.weight`` -> ``embeddings``; ``classifier.weight`` -> ``classifier``;
    ``bert.pooler.dense.bias`` -> ``pooler`` (the module below the base model's).
    """
    if "embeddings" in name:
        return "embeddings"
    if match := _LAYER.search(name):
        return f"layer.{match.group(2)}"
    if "classifier" in name:
        return "classifier"
    parts = name.split(".")
    return parts[1] if len(parts) > 2 else parts[0]


@dataclass
class Moments:
    """Sums over some tensors, from which their statistics follow."""

    numel: int = 0
    total: float = 0.0
    squares: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    zeros: int = 0
    nonfinite: int = 0
    update_squares: float = 0.0

    def add(self, other: Moments) -> None:
        self.numel += other.numel
        self.total += other.total
        self.squares += other.squares
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.zeros += other.zeros
        self.nonfinite += other.nonfinite
        self.update_squares += other.update_squares

    @classmethod
    def of(cls, tensor: torch.Tensor, previous: torch.Tensor | None) -> Moments:
        """One tensor's sums (non-finite values counted, left out of the rest); the update's against ``previous``."""
        x = tensor.detach().flatten()
        nonfinite = _nonfinite(x)
        values = x[torch.isfinite(x)] if nonfinite else x
        update = 0.0
        if previous is not None:
            diff = x - previous.detach().flatten()
            update = _squares(diff[torch.isfinite(x)] if nonfinite else diff)
        empty = values.numel() == 0
        return cls(
            numel=x.numel(),
            total=float(values.sum()),
            squares=_squares(values),
            low=math.inf if empty else float(values.min()),
            high=-math.inf if empty else float(values.max()),
            zeros=x.numel() - int(torch.count_nonzero(x)),
            nonfinite=nonfinite,
            update_squares=update,
        )

    def row(self, has_previous: bool) -> dict[str, float | int | str]:
        """The statistics columns of weight_stats.csv."""
        finite = max(self.numel - self.nonfinite, 1)
        mean = self.total / finite
        norm = math.sqrt(self.squares)
        change: dict[str, float | str] = {"update_l2_norm": "", "relative_update": ""}
        if has_previous:
            update = math.sqrt(self.update_squares)
            change = {"update_l2_norm": update, "relative_update": update / norm if norm > 0 else ""}
        return {
            "numel": self.numel,
            "l2_norm": norm,
            "mean": mean,
            "std": math.sqrt(max(self.squares / finite - mean * mean, 0.0)),
            "min": self.low,
            "max": self.high,
            "zero_fraction": self.zeros / max(self.numel, 1),
            "nonfinite": self.nonfinite,
            **change,
        }


def weight_rows(server_round: int, state: State, previous: State | None) -> list[dict]:
    """weight_stats.csv rows of a global model: every floating-point tensor, every layer group, the model.

    ``previous``: the global model of the round before (None for round 0: no update columns).
    """
    rows: list[dict] = []
    groups: dict[str, Moments] = {}
    whole = Moments()
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        m = Moments.of(tensor, previous[name] if previous is not None else None)
        group = layer_group(name)
        rows.append(
            {"round": server_round, "scope": TENSOR, "name": name, "group": group, **m.row(previous is not None)}
        )
        groups.setdefault(group, Moments()).add(m)
        whole.add(m)
    for group, m in groups.items():
        rows.append(
            {"round": server_round, "scope": GROUP, "name": group, "group": group, **m.row(previous is not None)}
        )
    rows.append(
        {"round": server_round, "scope": MODEL, "name": WHOLE_MODEL, "group": "", **whole.row(previous is not None)}
    )
    return rows


def robust_z(values: Sequence[float]) -> list[float]:
    """Robust z-scores: 0.6745 (x - median) / MAD; from the mean absolute deviation when the MAD is 0; 0 if both are."""
    if not values:
        return []
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    if mad > 0:
        return [MAD_SCALE * (v - median) / mad for v in values]
    mean_ad = statistics.fmean(abs(v - median) for v in values)
    return [MEAN_AD_SCALE * (v - median) / mean_ad if mean_ad > 0 else 0.0 for v in values]


@dataclass(frozen=True)
class ClientUpdate:
    """One client's returned weights in a round, and the examples it trained on."""

    partition_id: int
    num_examples: int
    state: State


def client_rows(
    server_round: int, previous: State, aggregate: State, clients: Sequence[ClientUpdate], threshold: float
) -> list[dict]:
    """client_updates.csv rows: each client's update (its weights - ``previous``) against the aggregated one.

    A client is an outlier when the robust z-score of its update norm is beyond ``threshold`` either way,
    or when its update points against the aggregated one: a cosine below 0 whose z-score is below
    ``-threshold`` (a low cosine alone is common: 5 honest clients of 2 small steps each had cosines
    from 0.23 to 0.71, z down to -3.5). ``nonfinite`` counts its NaN and Inf values.
    """
    sums = _update_sums(previous, aggregate, [c.state for c in clients])
    norms = [math.sqrt(s.uu) for s in sums]
    agg_norm = math.sqrt(sums[0].aa) if sums else 0.0
    cosines = [s.ua / (n * agg_norm) if n > 0 and agg_norm > 0 else 0.0 for s, n in zip(sums, norms, strict=True)]
    norm_z, cosine_z = robust_z(norms), robust_z(cosines)
    total = sum(c.num_examples for c in clients)
    return [
        {
            "round": server_round,
            "partition_id": c.partition_id,
            "num_examples": c.num_examples,
            "example_share": c.num_examples / total if total else "",
            "update_l2_norm": norms[i],
            "cosine_to_aggregate": cosines[i],
            "distance_to_aggregate": math.sqrt(sums[i].dd),
            "norm_z": norm_z[i],
            "cosine_z": cosine_z[i],
            "outlier": abs(norm_z[i]) > threshold or (cosine_z[i] < -threshold and cosines[i] < 0),
            "nonfinite": sums[i].nonfinite,
        }
        for i, c in enumerate(clients)
    ]


@dataclass
class UpdateSums:
    """Over the floating-point tensors: |u|², |a|², u·a, |u - a|² (u: a client's update, a: the aggregate's)."""

    uu: float = 0.0
    aa: float = 0.0
    ua: float = 0.0
    dd: float = 0.0
    nonfinite: int = 0  # the client's NaN and Inf values (left out of the sums)


def _squares(x: torch.Tensor) -> float:
    """The sum of squares of ``x`` (torch's float32 reductions: vectorised, relative error ~1e-6)."""
    return float(torch.dot(x, x))


def _nonfinite(x: torch.Tensor) -> int:
    """NaN and Inf values in ``x``; a finite sum proves there are none without a pass of its own."""
    return 0 if math.isfinite(float(x.sum())) else int((~torch.isfinite(x)).sum())


def _update_sums(previous: State, aggregate: State, states: Sequence[State]) -> list[UpdateSums]:
    """Each client's :class:`UpdateSums`, tensor by tensor (the aggregate's update computed once per tensor)."""
    sums = [UpdateSums() for _ in states]
    for name, start in previous.items():
        if not start.is_floating_point():
            continue
        a = (aggregate[name] - start).flatten()
        aa = _squares(a)
        for s, state in zip(sums, states, strict=True):
            u = (state[name] - start).flatten()
            if bad := _nonfinite(u):
                s.nonfinite += bad
                u = torch.nan_to_num(u, nan=0.0, posinf=0.0, neginf=0.0)
            s.aa += aa
            s.uu += _squares(u)
            s.ua += float(torch.dot(u, a))
            s.dd += _squares(u - a)
    return sums
