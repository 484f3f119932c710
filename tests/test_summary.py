"""Statistics across repeats and the summary files, on hand-made rounds.csv rows."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from PIL import Image

from fedimdb.artifacts import csv_bytes, read_csv
from fedimdb.summary import SUMMARY_METRICS, describe, markdown_table, summarize, t95, write_summary
from server.records import CLIENT_COLUMNS, ROUND_COLUMNS

pytestmark = pytest.mark.timeout(120)


def _t_pdf(x: float, dof: int) -> float:
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return math.exp(log_c) * (1 + x * x / dof) ** (-(dof + 1) / 2)


def _t975(dof: int, steps: int = 4000) -> float:
    """Student t's 97.5 % quantile, independently: bisection on P(0 < T < x) = 0.475, Simpson's rule."""

    def mass(x: float) -> float:
        h = x / steps
        inner = sum((4 if i % 2 else 2) * _t_pdf(i * h, dof) for i in range(1, steps))
        return (_t_pdf(0, dof) + inner + _t_pdf(x, dof)) * h / 3

    lo, hi = 0.0, 100.0
    while hi - lo > 1e-7:
        lo, hi = ((lo + hi) / 2, hi) if mass((lo + hi) / 2) < 0.475 else (lo, (lo + hi) / 2)
    return (lo + hi) / 2


@pytest.mark.parametrize("dof", [1, 2, 4, 10, 29, 30, 31, 60, 200])
def test_describe_uses_the_t_quantile(dof: int) -> None:
    reference = _t975(dof)
    assert t95(dof) == pytest.approx(reference, abs=1e-3)
    values = [0.8 + 0.01 * (i % 3) + 0.001 * i for i in range(dof + 1)]
    stats = describe(values)
    assert stats["n"] == dof + 1 and stats["mean"] == pytest.approx(statistics.fmean(values))
    assert stats["std"] == pytest.approx(statistics.stdev(values))
    half = (stats["ci95_high"] - stats["ci95_low"]) / 2
    assert half * math.sqrt(dof + 1) / stats["std"] == pytest.approx(reference, abs=1e-3)


def test_describe_of_one_value_has_no_spread() -> None:
    single = describe([0.5])
    assert single["mean"] == 0.5 and math.isnan(single["std"]) and math.isnan(single["ci95_low"])


def _rounds(acc: list[float]) -> list[dict[str, str]]:
    return [
        {
            **{c: "" for c in ROUND_COLUMNS},
            "round": str(i + 1),
            "central_accuracy": str(a),
            "central_loss": str(1 - a),
            "round_seconds": "10.0",
        }
        for i, a in enumerate(acc)
    ]


def test_summarize_groups_by_metric_and_round() -> None:
    rows = summarize([_rounds([0.6, 0.7]), _rounds([0.8, 0.9])])
    acc = [r for r in rows if r["metric"] == "central_accuracy"]
    assert [(r["round"], r["n"], round(r["mean"], 6)) for r in acc] == [(1, 2, 0.7), (2, 2, 0.8)]
    assert {r["metric"] for r in rows} == {"central_accuracy", "central_loss", "round_seconds"}
    assert set(SUMMARY_METRICS) >= {r["metric"] for r in rows}
    table = markdown_table(rows, "exp", 2)
    assert "| central_accuracy | 2 | 0.8000 |" in table and "## Round 2" in table


def test_write_summary_makes_csv_markdown_and_valid_pngs(tmp_path: Path) -> None:
    dirs = {}
    for k, acc in enumerate(([0.6, 0.7], [0.62, 0.75], [0.58, 0.71])):
        d = tmp_path / f"repeat-{k}"
        d.mkdir()
        (d / "rounds.csv").write_bytes(csv_bytes(ROUND_COLUMNS, _rounds(acc)))
        clients = [
            {**{c: "" for c in CLIENT_COLUMNS}, "round": r, "partition_id": p, "train_loss": 0.7 - 0.01 * r}
            for r in (1, 2)
            for p in (0, 1)
        ]
        (d / "clients.csv").write_bytes(csv_bytes(CLIENT_COLUMNS, clients))
        dirs[k] = d
    write_summary(tmp_path, dirs)
    summary = read_csv(tmp_path / "summary.csv")
    assert list(summary[0]) == ["metric", "round", "n", "mean", "std", "ci95_low", "ci95_high"]
    assert all(row["n"] == "3" for row in summary)
    assert (tmp_path / "summary.md").read_text().startswith("# Experiment")
    for name in ("accuracy.png", "loss.png", "client-train-loss.png", "round-seconds.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.size[0] > 100
