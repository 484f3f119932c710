"""Comparing a sweep's cells (pure): each repeat's outcome, each cell's statistics, paired tests.

A repeat's outcome is its final central accuracy, its time to accuracy (the seconds of its rounds up
to the first whose central accuracy reached the target) and the weight bytes its rounds carried. The
cells' repeats share their seeds (repeat k of every cell runs with seed + k), so two cells are
compared repeat by repeat: a paired t-test on the differences, from scipy.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedimdb.summary import describe

FINAL_ACCURACY = "final_accuracy"
TTA_SECONDS = "tta_seconds"
BYTES = "bytes"
OUTCOMES = (FINAL_ACCURACY, TTA_SECONDS, BYTES)
PAIRED_TEST = "paired t-test (scipy.stats.ttest_rel, two-sided)"
SIGNIFICANCE = 0.05
TTA_TARGET = 0.85  # the accuracy a sweep's time to accuracy counts to, unless --tta-target says otherwise


@dataclass(frozen=True)
class Outcome:
    """What one verified repeat came to; None where it has no value (the target never reached)."""

    final_accuracy: float
    tta_seconds: float | None
    bytes: float | None

    def value(self, metric: str) -> float | None:
        """The outcome named ``metric`` (one of :data:`OUTCOMES`)."""
        return getattr(self, metric)


def time_to_accuracy(rounds: Sequence[Mapping[str, str]], target: float) -> float | None:
    """Seconds of rounds 1..k, k the first round whose central accuracy is at least ``target``; None if none is."""
    seconds = 0.0
    for row in rounds:
        seconds += float(row["round_seconds"])
        if row["central_accuracy"] not in ("", None) and float(row["central_accuracy"]) >= target:
            return seconds
    return None


def outcome_of(rounds: Sequence[Mapping[str, str]], target: float) -> Outcome:
    """A repeat's outcome from its rounds.csv rows (bytes: None for a run recorded before they were counted)."""
    counted = all(row.get("bytes_sent", "") != "" for row in rounds)
    traffic = sum(float(r["bytes_sent"]) + float(r["bytes_received"]) for r in rounds) if counted else None
    return Outcome(float(rounds[-1]["central_accuracy"]), time_to_accuracy(rounds, target), traffic)


def values_of(outcomes: Mapping[int, Outcome], metric: str) -> dict[int, float]:
    """Repeat -> its value of ``metric``, for the repeats that have one."""
    return {k: v for k, o in outcomes.items() if (v := o.value(metric)) is not None}


def cell_statistics(outcomes: Mapping[int, Outcome]) -> list[dict[str, Any]]:
    """Per outcome: the repeats, how many have a value, and their mean, std and 95 % CI."""
    rows = []
    for metric in OUTCOMES:
        values = list(values_of(outcomes, metric).values())
        empty = {"n": 0, "mean": math.nan, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
        rows.append({"metric": metric, "repeats": len(outcomes), **(describe(values) if values else empty)})
    return rows


@dataclass(frozen=True)
class Comparison:
    """One paired test: ``second`` minus ``first`` over the repeats both have a value for."""

    metric: str
    first: str
    second: str
    pairs: int
    mean_difference: float
    ci95_low: float
    ci95_high: float
    p_value: float  # NaN: fewer than 2 pairs, or differences all equal (nothing to test)

    @property
    def significant(self) -> bool:
        """Whether the difference is significant at :data:`SIGNIFICANCE` (no correction for the number of tests)."""
        return not math.isnan(self.p_value) and self.p_value < SIGNIFICANCE


def paired(first: Mapping[int, Outcome], second: Mapping[int, Outcome], metric: str) -> tuple[list[float], list[float]]:
    """The two cells' values of ``metric``, repeat by repeat, where both have one."""
    x, y = values_of(first, metric), values_of(second, metric)
    both = sorted(x.keys() & y.keys())
    return [x[k] for k in both], [y[k] for k in both]


def compare_pair(
    first: Mapping[int, Outcome], second: Mapping[int, Outcome], metric: str, names: tuple[str, str]
) -> Comparison:
    """The paired t-test of ``metric`` between two cells."""
    a, b = paired(first, second, metric)
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    mean = math.fsum(diffs) / len(diffs) if diffs else math.nan
    if len(diffs) < 2 or max(diffs) == min(diffs):
        return Comparison(metric, *names, len(diffs), mean, math.nan, math.nan, math.nan)
    from scipy import stats  # here: orchestrate.py without --sweep does not pay for importing scipy (0.5 s)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(b, a)
    interval = result.confidence_interval(0.95)
    return Comparison(metric, *names, len(diffs), mean, float(interval.low), float(interval.high), float(result.pvalue))


def compare_cells(cells: Mapping[str, Mapping[int, Outcome]]) -> list[Comparison]:
    """Every pair of cells, on every outcome, in the cells' order."""
    return [
        compare_pair(cells[a], cells[b], metric, (a, b))
        for metric in OUTCOMES
        for a, b in itertools.combinations(cells, 2)
    ]
