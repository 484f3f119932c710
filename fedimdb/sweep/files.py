"""A sweep's comparison files, from its cells' verified repeats.

``sweep.csv``: per cell and outcome (final accuracy, time to accuracy, weight bytes), the repeats,
how many have a value, mean, std and 95 % CI. ``sweep-tests.csv``: the paired test of every pair of
cells on every outcome. ``sweep.md``: both as tables. ``sweep-accuracy.png``: each cell's central
accuracy per round, mean with its 95 % CI band. The statistics: fedimdb/sweep/compare.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedimdb.artifacts import ROUNDS_FILE, csv_bytes, read_csv, read_json, write_bytes_atomic
from fedimdb.experiment import repeat_dir
from fedimdb.experiment_record import EXPERIMENT_FILE, ExperimentRecord, RepeatStatus
from fedimdb.figures import new_figure, write_png
from fedimdb.summary import summarize
from fedimdb.sweep.compare import (
    OUTCOMES,
    PAIRED_TEST,
    SIGNIFICANCE,
    TTA_SECONDS,
    Comparison,
    Outcome,
    cell_statistics,
    compare_cells,
    outcome_of,
)
from fedimdb.sweep.record import SweepRecord

SWEEP_CSV = "sweep.csv"
SWEEP_TESTS_CSV = "sweep-tests.csv"
SWEEP_MD = "sweep.md"
SWEEP_PLOT = "sweep-accuracy.png"
STAT_COLUMNS = ("metric", "repeats", "n", "mean", "std", "ci95_low", "ci95_high")
TEST_COLUMNS = (
    "metric",
    "first",
    "second",
    "pairs",
    "mean_difference",
    "ci95_low",
    "ci95_high",
    "p_value",
    "significant",
)


def verified_rounds(cell_dir: Path) -> dict[int, list[dict[str, str]]]:
    """Repeat -> rounds.csv rows, for the cell's verified repeats."""
    record = ExperimentRecord.from_json(read_json(cell_dir / EXPERIMENT_FILE))
    done = sorted(int(k) for k, rep in record.repeats.items() if rep.status == RepeatStatus.VERIFIED)
    return {k: read_csv(repeat_dir(cell_dir, k) / ROUNDS_FILE) for k in done}


def write_sweep_files(sweep_dir: Path, record: SweepRecord) -> list[Comparison]:
    """sweep.csv, sweep-tests.csv, sweep.md and the plot, from the cells' folders; the paired tests."""
    rounds = {cell.name: verified_rounds(sweep_dir / cell.name) for cell in record.cells}
    outcomes = {name: {k: outcome_of(r, record.tta_target) for k, r in reps.items()} for name, reps in rounds.items()}
    rows = [
        {"cell": cell.name, **cell.values, **stat}
        for cell in record.cells
        for stat in cell_statistics(outcomes[cell.name])
    ]
    write_bytes_atomic(sweep_dir / SWEEP_CSV, csv_bytes(("cell", *(a.key for a in record.axes), *STAT_COLUMNS), rows))
    tests = compare_cells(outcomes)
    test_rows = [{**vars(t), "significant": t.significant} for t in tests]
    write_bytes_atomic(sweep_dir / SWEEP_TESTS_CSV, csv_bytes(TEST_COLUMNS, test_rows))
    write_bytes_atomic(sweep_dir / SWEEP_MD, sweep_markdown(record, rows, tests, outcomes).encode())
    write_accuracy_plot(sweep_dir / SWEEP_PLOT, rounds)
    return tests


def _fmt(x: Any) -> str:
    return "–" if isinstance(x, float) and math.isnan(x) else f"{x:.4g}"


def sweep_markdown(
    record: SweepRecord, rows: list[dict[str, Any]], tests: list[Comparison], outcomes: dict[str, dict[int, Outcome]]
) -> str:
    """sweep.md: each cell's outcomes, then the paired tests."""
    axes = "; ".join(f"{axis.key} = {', '.join(axis.values)}" for axis in record.axes)
    lines = [
        f"# Sweep {record.sweep_id}",
        "",
        f"Axes: {axes}. Mean over the verified repeats "
        f"[95 % CI]; {TTA_SECONDS}: seconds of the rounds until central accuracy first reached {record.tta_target} "
        "(n: the repeats that reached it); bytes: the weights the rounds carried, both ways.",
        "",
        "| cell | " + " | ".join(OUTCOMES) + " |",
        "| --- |" + " --- |" * len(OUTCOMES),
    ]
    for cell in record.cells:
        stats = {r["metric"]: r for r in rows if r["cell"] == cell.name}
        cols = [
            f"{_fmt(s['mean'])} [{_fmt(s['ci95_low'])}, {_fmt(s['ci95_high'])}] (n {s['n']}/{s['repeats']})"
            for s in (stats[m] for m in OUTCOMES)
        ]
        lines.append(f"| {cell.name} | " + " | ".join(cols) + " |")
    lines += [
        "",
        f"## Paired tests: {PAIRED_TEST}",
        "",
        f"Repeat k of every cell runs with the same seed, so cells are compared repeat by repeat: second minus "
        f"first. Significant: p < {SIGNIFICANCE}, each test on its own (no correction for the {len(tests)} tests). "
        "p is – with fewer than 2 pairs, or when every pair differs by the same amount.",
        "",
        "| outcome | first | second | pairs | mean difference [95 % CI] | p | significant |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in tests:
        lines.append(
            f"| {t.metric} | {t.first} | {t.second} | {t.pairs} | {_fmt(t.mean_difference)} "
            f"[{_fmt(t.ci95_low)}, {_fmt(t.ci95_high)}] | {_fmt(t.p_value)} | {'yes' if t.significant else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def write_accuracy_plot(path: Path, rounds: dict[str, dict[int, list[dict[str, str]]]]) -> Path:
    """Each cell's central accuracy per round: the mean over its repeats, with the 95 % CI band."""
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    for i, (name, reps) in enumerate(rounds.items()):
        curve = summarize(reps.values(), ("central_accuracy",))
        if not curve:
            continue
        x = [r["round"] for r in curve]
        ax.plot(x, [r["mean"] for r in curve], marker="o", color=f"C{i % 10}", label=name)
        if all(not math.isnan(r["ci95_low"]) for r in curve):
            low, high = [r["ci95_low"] for r in curve], [r["ci95_high"] for r in curve]
            ax.fill_between(x, low, high, color=f"C{i % 10}", alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("global accuracy (mean, 95 % CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return write_png(fig, path)
