"""The Grafana dashboard's queries: listed, filled in, and drawn from a real Prometheus.

Grafana cannot run everywhere (it cannot here); ``python -m monitoring.dashboard`` draws every
panel of monitoring/grafana/dashboards/fedimdb.json with matplotlib from the same PromQL, over a
time range, so the panels of a real run can be seen (and checked) without it::

    python -m monitoring.dashboard --prometheus http://localhost:9090 --start 1795900000 \\
        --end 1795900600 --out docs/monitoring.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).with_name("grafana") / "dashboards" / "fedimdb.json"
POINTS = 200  # per series in a rendered panel
COLUMNS = 4
CAPTION = "fedimdb dashboard queries, rendered with matplotlib from a real Prometheus (Grafana cannot run here)"


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel: its title, Grafana's refId, the PromQL, its legend, instant or over the range."""

    title: str
    ref_id: str
    expr: str
    legend: str = ""
    instant: bool = False


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for panel in panels:
        out.append(panel)
        out += _panels(panel.get("panels", []))
    return out


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every target expression of every panel, in the dashboard's order."""
    return [
        PanelQuery(
            panel["title"], target["refId"], target["expr"], target.get("legendFormat", ""), bool(target.get("instant"))
        )
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with the dashboard variables (``$run``, ``${run}``) replaced by ``values``."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)


def query_range(prometheus: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    """The series of ``expr`` between ``start`` and ``end`` (Unix seconds), as Grafana asks Prometheus.

    An instant query (at ``end``) comes back in the same shape: one point per series.
    """
    step = max(1.0, (end - start) / POINTS)
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=60) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error')}")
    return body["data"]["result"]


def query_panel(prometheus: str, q: PanelQuery, values: Mapping[str, str], start: float, end: float) -> list[dict]:
    """What a panel's query shows over [start, end]: the range, or an instant query's value at ``end``."""
    expr = substitute(q.expr, values)
    if not q.instant:
        return query_range(prometheus, expr, start, end)
    params = urllib.parse.urlencode({"query": expr, "time": end})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query?{params}", timeout=60) as resp:
        found = json.load(resp)["data"]["result"]
    return [{"metric": s["metric"], "values": [s["value"]]} for s in found]


def legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's ``{{label}}`` legend filled in from a series' labels."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) or _labels_text(labels)


def render(prometheus: str, dashboard_path: Path, out: Path, start: float, end: float, run: str = ".*") -> Path:
    """Draw every panel's queries over [start, end] into a PNG at ``out``; its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(dashboard_path.read_text())
    panels = [p for p in _panels(dashboard["panels"]) if p.get("targets")]
    rows = math.ceil(len(panels) / COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(5 * COLUMNS, 3 * rows), squeeze=False)
    values = {"run": run, "experiment": ".*"}
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw(
            ax,
            panel,
            [(q, query_panel(prometheus, q, values, start, end)) for q in panel_queries({"panels": [panel]})],
            start,
        )
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.suptitle(CAPTION, fontsize=14)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _draw(ax: Any, panel: Mapping[str, Any], results: list[tuple[PanelQuery, list[dict[str, Any]]]], t0: float) -> None:
    """One panel: a line per series (minutes since ``t0``), or "no data"."""
    ax.set_title(panel["title"], fontsize=10)
    if panel.get("type") == "table":  # label sets, as Grafana's table shows them
        rows = [_labels_text(series["metric"]) for _, found in results for series in found]
        ax.axis("off")
        ax.text(0, 1, "\n".join(rows) or "no data", va="top", fontsize=7, wrap=True, transform=ax.transAxes)
        return
    drawn = 0
    for q, found in results:
        for series in found:
            points = [(float(t), float(v)) for t, v in series["values"]]
            ax.plot(
                [(t - t0) / 60 for t, _ in points], [v for _, v in points], label=legend(q.legend, series["metric"])
            )
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    ax.set_xlabel("minutes", fontsize=8)
    ax.tick_params(labelsize=7)
    if drawn <= 12:
        ax.legend(fontsize=6, loc="best")


def _labels_text(labels: Mapping[str, str]) -> str:
    """A series' own labels (not Prometheus's name, job and instance), as ``key=value`` pairs."""
    return "  ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("__name__", "job", "instance"))


def main(argv: list[str] | None = None) -> int:
    """Render the dashboard's panels from a Prometheus over a time range."""
    p = argparse.ArgumentParser(prog="python -m monitoring.dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--prometheus", default="http://localhost:9090", help="Prometheus base URL")
    p.add_argument("--start", type=float, required=True, help="Unix time of the range's start")
    p.add_argument("--end", type=float, required=True, help="Unix time of the range's end")
    p.add_argument("--out", type=Path, default=Path("docs/monitoring.png"), help="PNG to write")
    p.add_argument("--run", default=".*", help="Flower run id(s) to show, a regular expression (default: all)")
    p.add_argument("--dashboard", type=Path, default=DASHBOARD, help="Grafana dashboard JSON")
    args = p.parse_args(argv)
    print(render(args.prometheus, args.dashboard, args.out, args.start, args.end, args.run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
