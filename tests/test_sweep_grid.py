"""A sweep's grid and its statistics (fedimdb/sweep/grid.py, compare.py), pure: milliseconds a test.
The real sweep on the simulation backend: tests/test_sweep.py."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from fedimdb.config import ConfigError
from fedimdb.sweep.compare import (
    BYTES,
    FINAL_ACCURACY,
    TTA_SECONDS,
    Outcome,
    cell_statistics,
    compare_cells,
    outcome_of,
    time_to_accuracy,
)
from fedimdb.sweep.grid import Axis, cells_of, parse_axes

pytestmark = pytest.mark.timeout(30)


def test_two_axes_make_their_product_first_axis_slowest() -> None:
    axes = parse_axes(["strategy=fedavg,fedadam", "alpha=iid,0.1"])
    assert axes == [Axis("strategy", ("fedavg", "fedadam")), Axis("alpha", ("iid", "0.1"))]
    cells = cells_of(axes)
    assert [c.name for c in cells] == [
        "strategy-fedavg_alpha-iid",
        "strategy-fedavg_alpha-0.1",
        "strategy-fedadam_alpha-iid",
        "strategy-fedadam_alpha-0.1",
    ]
    assert cells[0].run_values() == {"strategy": "fedavg"}


def test_alpha_is_one_axis_for_iid_and_dirichlet() -> None:
    iid, skewed = cells_of(parse_axes(["alpha=iid,0.1"]))
    assert iid.data_values() == {"partitioner": "iid"} and iid.data_tag() == "iid"
    assert skewed.data_values() == {"partitioner": "dirichlet", "alpha": "0.1"} and skewed.data_tag() == "alpha-0.1"
    (plain,) = cells_of(parse_axes(["max-steps=4"]))
    assert plain.data_values() == {} and plain.data_tag() == "" and plain.run_values() == {"max-steps": "4"}


@pytest.mark.parametrize(
    ("items", "says"),
    [
        (["strategy"], "write it as KEY=V1,V2"),
        (["strategy=fedavg,"], "write it as KEY=V1,V2"),
        (["colour=red,blue"], "not a setting a sweep can vary"),
        (["partitioner=iid,dirichlet"], "partitioning is the alpha axis"),
        (["strategy=fedavg,fedavg"], "a value is given twice"),
        (["strategy=fedavg", "strategy=fedadam"], "strategy on two axes"),
        (["model=a/b,a_b"], "differ only in punctuation"),
    ],
)
def test_a_bad_axis_is_refused_naming_the_fix(items: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        cells_of(parse_axes(items))


def _rounds(*accuracies: float, seconds: float = 10.0, traffic: int = 100) -> list[dict[str, str]]:
    return [
        {
            "round": str(k),
            "central_accuracy": str(a),
            "round_seconds": str(seconds),
            "bytes_sent": str(traffic),
            "bytes_received": str(traffic),
        }
        for k, a in enumerate(accuracies, 1)
    ]


def test_time_to_accuracy_sums_the_rounds_up_to_the_first_that_reached_the_target() -> None:
    assert time_to_accuracy(_rounds(0.6, 0.8, 0.7, 0.9), 0.8) == 20.0
    assert time_to_accuracy(_rounds(0.6, 0.7), 0.8) is None
    outcome = outcome_of(_rounds(0.6, 0.85), 0.8)
    assert outcome == Outcome(final_accuracy=0.85, tta_seconds=20.0, bytes=400.0)
    old = [{k: v for k, v in r.items() if not k.startswith("bytes")} for r in _rounds(0.6)]
    assert outcome_of(old, 0.8).bytes is None


def test_a_cells_statistics_count_only_the_repeats_with_a_value() -> None:
    outcomes = {0: Outcome(0.8, 20.0, 1e6), 1: Outcome(0.9, None, 1e6), 2: Outcome(0.85, 40.0, 1e6)}
    rows = {r["metric"]: r for r in cell_statistics(outcomes)}
    assert (rows[FINAL_ACCURACY]["n"], rows[FINAL_ACCURACY]["repeats"]) == (3, 3)
    assert rows[FINAL_ACCURACY]["mean"] == pytest.approx(0.85)
    assert (rows[TTA_SECONDS]["n"], rows[TTA_SECONDS]["mean"]) == (2, 30.0)
    assert rows[BYTES]["std"] == 0.0


def test_cells_are_compared_repeat_by_repeat_with_scipys_paired_t_test() -> None:
    a = {k: Outcome(acc, None, 1e6) for k, acc in enumerate((0.70, 0.75, 0.72, 0.71))}
    b = {k: Outcome(acc, None, 2e6) for k, acc in enumerate((0.80, 0.83, 0.81, 0.82))}
    tests = {t.metric: t for t in compare_cells({"a": a, "b": b})}
    acc = tests[FINAL_ACCURACY]
    expected = stats.ttest_rel([0.80, 0.83, 0.81, 0.82], [0.70, 0.75, 0.72, 0.71])
    assert (acc.first, acc.second, acc.pairs) == ("a", "b", 4)
    assert acc.p_value == pytest.approx(expected.pvalue) and acc.significant
    assert acc.mean_difference == pytest.approx(0.095) and acc.ci95_low < 0.095 < acc.ci95_high
    assert tests[TTA_SECONDS].pairs == 0 and math.isnan(tests[TTA_SECONDS].p_value)
    assert math.isnan(tests[BYTES].p_value) and not tests[BYTES].significant  # the same difference every time
    assert tests[BYTES].mean_difference == 1e6


def test_a_difference_within_the_noise_is_not_significant() -> None:
    a = {k: Outcome(acc, None, None) for k, acc in enumerate((0.70, 0.80, 0.75))}
    b = {k: Outcome(acc, None, None) for k, acc in enumerate((0.72, 0.76, 0.78))}
    (acc, *_) = compare_cells({"a": a, "b": b})
    assert acc.metric == FINAL_ACCURACY and acc.p_value > 0.05 and not acc.significant
