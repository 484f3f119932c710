"""The Grafana dashboard is generated (monitoring/grafana_dashboard.py, Grafana's Foundation SDK):
the checked-in JSON is what the generator writes, and it holds together as a Grafana dashboard.

That its queries return data from a real Prometheus: tests/test_monitoring.py and
tests/test_docker_faults.py (``check_dashboard``); that every metric is on a panel:
tests/test_monitoring.py::test_dashboard_shows_every_metric.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.dashboard import DASHBOARD, panel_queries, substitute
from monitoring.grafana_dashboard import DATASOURCES, main, render
from tests.monitoring_checks import require_prometheus

GRID_COLUMNS = 24


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(render())


def test_the_checked_in_dashboard_is_what_the_generator_writes() -> None:
    assert DASHBOARD.read_text() == render(), f"{DASHBOARD} is stale: run python -m monitoring.grafana_dashboard"


def test_check_names_the_fix_for_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fedimdb.json"
    assert main(["--check", "--out", str(out)]) == 1, "a missing file is stale"
    assert main(["--out", str(out)]) == 0 and out.read_text() == render()
    assert main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("fedimdb_server_round", "fedimdb_server_rnd"))
    capsys.readouterr()
    assert main(["--check", "--out", str(out)]) == 1
    assert "run python -m monitoring.grafana_dashboard" in capsys.readouterr().err


def test_panels_tile_grafanas_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]  # the rows are open, so every panel is at the top level (checked below)
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= GRID_COLUMNS, f"{p['title']}: past the grid's right edge"
        for cell in itertools.product(range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])):
            assert cell not in cells, f"{p['title']} overlaps {cells[cell]}"
            cells[cell] = p["title"]
    rows = [p for p in panels if p["type"] == "row"]
    assert all(r["gridPos"]["w"] == GRID_COLUMNS and not r["collapsed"] and not r["panels"] for r in rows)


def test_every_query_asks_the_provisioned_prometheus_for_the_chosen_runs_or_experiments(
    dashboard: dict[str, Any],
) -> None:
    (provisioned,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    source = {"type": provisioned["type"], "uid": provisioned["uid"]}
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"run", "experiment"}
    assert all(v["datasource"] == source for v in dashboard["templating"]["list"])
    for p in dashboard["panels"]:
        assert p["type"] == "row" or p["datasource"] == source, p["title"]
        assert all(t["datasource"] == source for t in p.get("targets", [])), p["title"]
    for q in panel_queries(dashboard):
        chosen = set(re.findall(r'(\w+)=~"\$(\w+)"', q.expr))
        assert chosen and all(label == name and name in variables for label, name in chosen), f"{q.title}: {q.expr}"


def test_prometheus_parses_every_query(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query (the selectors at "all") as a recording rule: a PromQL slip fails here, fast."""
    require_prometheus()
    everything = {"run": ".*", "experiment": ".*"}
    rules = [
        {"record": f"dashboard_query_{i}", "expr": substitute(q.expr, everything)}
        for i, q in enumerate(panel_queries(dashboard))
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
