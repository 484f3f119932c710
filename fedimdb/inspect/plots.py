"""PNGs of a report: the update L2 norm per round per layer group, and each client's cosine to the aggregate.

Both figures have one panel per run (per repeat of an experiment). They are built on
``matplotlib.figure.Figure`` (no pyplot state) and written atomically; earlier plots are never
overwritten: when a name is taken, the set is written as ``update-norms-2.png``, ... instead.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedimdb.figures import new_figure, write_png
from fedimdb.inspect.report import HIDDEN_BY_SECAGG, ExperimentReport, InspectError, RunReport

NORMS_PLOT = "update-norms.png"
COSINES_PLOT = "client-cosines.png"
PLOT_FILES = (NORMS_PLOT, COSINES_PLOT)
PANEL_COLUMNS = 3  # panels per row of a figure
PANEL_SIZE = (6.0, 4.0)  # inches per panel
WHOLE_MODEL_LABEL = "whole model"


def report_runs(report: RunReport | ExperimentReport) -> dict[str, RunReport]:
    """The runs of a report by name: one, or every inspected repeat."""
    return report.runs() if isinstance(report, ExperimentReport) else {report.run: report}


def _figure(panels: int) -> tuple[Any, list[Any]]:
    """A figure with ``panels`` axes on a grid of PANEL_COLUMNS columns (unused cells removed)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise InspectError(
            "plots need matplotlib: pip install matplotlib (or the orchestrator extra), or pass --no-plots"
        )
    cols = min(panels, PANEL_COLUMNS)
    rows = math.ceil(panels / cols)
    fig = new_figure(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows)
    grid = fig.subplots(rows, cols, squeeze=False).flatten().tolist()
    for ax in grid[panels:]:
        ax.remove()
    return fig, grid[:panels]


def norms_figure(runs: Mapping[str, RunReport]) -> Any:
    """Update L2 norm per round, one line per layer group and the whole model's dashed; log y; a panel per run."""
    fig, axes = _figure(len(runs))
    for ax, (name, rep) in zip(axes, runs.items(), strict=True):
        series = {**rep.group_update_norms, WHOLE_MODEL_LABEL: rep.update_norms}
        for label, by_round in series.items():
            points = sorted((k, v) for k, v in by_round.items() if math.isfinite(v) and v > 0)
            if points:
                style = {"color": "black", "linestyle": "--"} if label == WHOLE_MODEL_LABEL else {}
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label, **style)
        if ax.lines:
            ax.set_yscale("log")
            ax.legend(fontsize="small", ncol=2)
        else:
            ax.text(0.5, 0.5, "no update with a positive norm", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=f"{name}: update L2 norm per layer group", xlabel="round", ylabel="update L2 norm")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def cosine_grid(rep: RunReport) -> tuple[list[int], list[int], list[list[float]]]:
    """Rounds, partitions and the cosine of each (round, partition); NaN where a client had no update."""
    rounds = sorted({c.round for c in rep.cosines})
    partitions = sorted({c.partition_id for c in rep.cosines})
    cells = {(c.round, c.partition_id): c.cosine for c in rep.cosines}
    return rounds, partitions, [[cells.get((r, p), math.nan) for p in partitions] for r in rounds]


def cosines_figure(runs: Mapping[str, RunReport]) -> Any:
    """Heatmap of each client's cosine to the aggregated update: rows rounds, columns partitions; a panel per run."""
    import numpy as np
    from matplotlib import colormaps

    fig, axes = _figure(len(runs))
    cmap = colormaps["RdBu"].with_extremes(bad="lightgrey")
    for ax, (name, rep) in zip(axes, runs.items(), strict=True):
        rounds, partitions, grid = cosine_grid(rep)
        ax.set(title=f"{name}: cosine of client updates to the aggregate", xlabel="partition", ylabel="round")
        if not rounds:
            text = f"client updates {HIDDEN_BY_SECAGG}" if rep.secured else "no client updates"
            ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
            continue
        image = ax.imshow(np.ma.masked_invalid(np.array(grid)), cmap=cmap, vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(partitions)), [str(p) for p in partitions])
        ax.set_yticks(range(len(rounds)), [str(r) for r in rounds])
        fig.colorbar(image, ax=ax, label="cosine")
    fig.tight_layout()
    return fig


def free_paths(out: Path, names: tuple[str, ...] = PLOT_FILES) -> list[Path]:
    """New paths in ``out`` for ``names``: as named, else with the first suffix -2, -3, ... free for all of them."""
    n = 1
    while True:
        paths = [out / (name if n == 1 else f"{Path(name).stem}-{n}{Path(name).suffix}") for name in names]
        if not any(p.exists() for p in paths):
            return paths
        n += 1


def write_plots(report: RunReport | ExperimentReport, out: Path) -> list[Path]:
    """Both plots of ``report`` into folder ``out`` (never over an earlier plot); the paths written."""
    runs = report_runs(report)
    figures = [norms_figure(runs), cosines_figure(runs)]
    paths = free_paths(out)
    for path, fig in zip(paths, figures, strict=True):
        write_png(fig, path)
    return paths
