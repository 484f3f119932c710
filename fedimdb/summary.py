"""Statistics across repeats: per metric and round, n / mean / std / 95 % confidence interval.

Pure functions over the repeats' ``rounds.csv`` and ``clients.csv`` rows, plus the writers of
``summary.csv``, ``summary.md`` and the plots.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedimdb.artifacts import CLIENTS_FILE, ROUNDS_FILE, csv_bytes, read_csv, write_bytes_atomic
from fedimdb.figures import new_figure, write_png

SUMMARY_METRICS = (
    "central_accuracy",
    "central_loss",
    "train_loss",
    "local_eval_accuracy",
    "local_eval_loss",
    "round_seconds",
    "epsilon",  # differential privacy only: the epsilon spent after the round
)
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
CLIENT_LOSS_PLOT = "client-train-loss.png"
BAND_PLOTS = (  # file, metric, axis label: mean per round with a 95 % CI band
    ("accuracy.png", "central_accuracy", "global accuracy"),
    ("loss.png", "central_loss", "global loss"),
    ("round-seconds.png", "round_seconds", "round duration (s)"),
)
SUMMARY_COLUMNS = ("metric", "round", "n", "mean", "std", "ci95_low", "ci95_high")
# Two-sided 95 % Student t quantiles for 1..30 degrees of freedom; beyond that, the normal 1.96.
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


_Z975 = 1.959963984540054  # the normal distribution's 97.5 % quantile


def t95(dof: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``dof`` degrees of freedom.

    The table up to 30; beyond it the Cornish-Fisher expansion of t around the normal quantile
    (three terms: within 1e-4 from 30 degrees of freedom on).
    """
    if dof <= len(_T95):
        return _T95[dof - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def describe(values: list[float]) -> dict[str, float | int]:
    """n, mean, sample std and the t-based 95 % CI of the mean (CI and std need n >= 2)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    std = statistics.stdev(values)
    half = t95(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def summarize(
    repeats: Iterable[list[dict[str, str]]], metrics: Iterable[str] = SUMMARY_METRICS
) -> list[dict[str, Any]]:
    """Rows of summary.csv from each repeat's rounds.csv rows."""
    by_key: dict[tuple[str, int], list[float]] = defaultdict(list)
    for rows in repeats:
        for row in rows:
            for metric in metrics:
                if row.get(metric) not in (None, ""):
                    by_key[(metric, int(row["round"]))].append(float(row[metric]))
    return [
        {"metric": metric, "round": rnd, **describe(values)}
        for (metric, rnd), values in sorted(by_key.items(), key=lambda kv: (list(metrics).index(kv[0][0]), kv[0][1]))
    ]


def markdown_table(summary: list[dict[str, Any]], experiment_id: str, n_repeats: int) -> str:
    """summary.md: the final round of every metric, then accuracy per round."""

    def fmt(x: float) -> str:
        return "–" if isinstance(x, float) and math.isnan(x) else f"{x:.4f}"

    last = max((r["round"] for r in summary), default=0)
    lines = [
        f"# Experiment {experiment_id}",
        "",
        f"{n_repeats} verified repeat(s); mean ± std, 95 % CI of the mean.",
        "",
        f"## Round {last}",
        "",
        "| metric | n | mean | std | 95 % CI |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in summary:
        if r["round"] == last:
            lines.append(
                f"| {r['metric']} | {r['n']} | {fmt(r['mean'])} | {fmt(r['std'])} | "
                f"[{fmt(r['ci95_low'])}, {fmt(r['ci95_high'])}] |"
            )
    lines += ["", "## Central accuracy per round", "", "| round | n | mean | 95 % CI |", "| --- | --- | --- | --- |"]
    for r in summary:
        if r["metric"] == "central_accuracy":
            lines.append(
                f"| {r['round']} | {r['n']} | {fmt(r['mean'])} | [{fmt(r['ci95_low'])}, {fmt(r['ci95_high'])}] |"
            )
    return "\n".join(lines) + "\n"


def _band(ax: Any, summary: list[dict[str, Any]], metric: str, label: str) -> None:
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in summary if r["metric"] == metric]
    rounds = [r["round"] for r in rows]
    ax.plot(rounds, [r["mean"] for r in rows], marker="o", label=f"{label} (mean)")
    if all(not math.isnan(r["ci95_low"]) for r in rows):
        ax.fill_between(
            rounds, [r["ci95_low"] for r in rows], [r["ci95_high"] for r in rows], alpha=0.25, label="95 % CI"
        )
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()


def write_summary_plots(
    exp_dir: Path, summary: list[dict[str, Any]], clients: dict[int, list[dict[str, str]]]
) -> list[Path]:
    """PNG plots: global accuracy and loss (mean with CI band), per-client train loss, round duration."""
    from matplotlib.ticker import MaxNLocator

    written = []
    for name, metric, label in BAND_PLOTS:
        fig = new_figure(6, 4)
        _band(fig.subplots(), summary, metric, label)
        fig.tight_layout()
        written.append(write_png(fig, exp_dir / name))
    fig = new_figure(6, 4)
    ax = fig.subplots()
    for repeat, rows in sorted(clients.items()):
        per_client: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for row in rows:
            if row["train_loss"]:
                per_client[int(row["partition_id"])].append((int(row["round"]), float(row["train_loss"])))
        for pid, points in sorted(per_client.items()):
            ax.plot(
                *zip(*sorted(points), strict=True),
                color=f"C{pid % 10}",
                alpha=0.6,
                label=f"client {pid}" if repeat == min(clients) else None,
            )
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("client train loss")
    ax.set_title("per-client train loss (every repeat)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    written.append(write_png(fig, exp_dir / CLIENT_LOSS_PLOT))
    return written


def write_summary(exp_dir: Path, repeat_dirs: dict[int, Path]) -> list[dict[str, Any]]:
    """summary.csv, summary.md and the plots from the verified repeats' folders."""
    rounds = {k: read_csv(d / ROUNDS_FILE) for k, d in sorted(repeat_dirs.items())}
    clients = {k: read_csv(d / CLIENTS_FILE) for k, d in sorted(repeat_dirs.items())}
    summary = summarize(rounds.values())
    write_bytes_atomic(exp_dir / SUMMARY_CSV, csv_bytes(SUMMARY_COLUMNS, summary))
    write_bytes_atomic(exp_dir / SUMMARY_MD, markdown_table(summary, exp_dir.name, len(rounds)).encode())
    write_summary_plots(exp_dir, summary, clients)
    return summary
