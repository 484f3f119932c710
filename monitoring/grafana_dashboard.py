"""The Grafana dashboard, built with Grafana's Foundation SDK: monitoring/grafana/dashboards/fedimdb.json.

That JSON is generated, not edited: change the panels here, then write it again and check it in::

    python -m monitoring.grafana_dashboard           # writes monitoring/grafana/dashboards/fedimdb.json
    python -m monitoring.grafana_dashboard --check   # exits 1 if the checked-in file is not what this builds

The SDK (``grafana-foundation-sdk``, the build for the Grafana the Compose profile runs, 11.3) types
every builder after Grafana's own schema. The panels are data (``ROWS``); one loop builds them,
and the Grafana layout follows from each panel's width (``Dashboard.with_panel`` places them).
tests/test_grafana_dashboard.py checks that this module gives the checked-in file byte for byte.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from string import ascii_uppercase
from typing import TypedDict, Unpack

import yaml
from grafana_foundation_sdk.builders import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import TimeZoneBrowser
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh, VariableSort
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from fedimdb.metrics.server import RUN_LABEL
from monitoring.dashboard import DASHBOARD

UID = TITLE = "fedimdb"
DESCRIPTION = "A federated fine-tuning experiment: server, every client, the orchestrator. Metrics: fedimdb/metrics/."
TAGS = ["fedimdb", "flower", "federated-learning"]
DATASOURCES = Path(__file__).with_name("grafana") / "provisioning" / "datasources" / "prometheus.yml"
HEIGHT = 7  # grid rows of every panel; widths are per panel, 24 to a line
RUN, EXPERIMENT, PARTITION, REPEAT, STATUS = RUN_LABEL, "experiment", "partition", "repeat", "status"  # labels
PanelBuilder = timeseries.Panel | stat.Panel | bargauge.Panel | table.Panel


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and its legend (Grafana's ``{{label}}`` template)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    """One panel: its title, queries, kind (an SDK panel builder), width, unit and description.

    A ``table`` panel asks for its queries' latest values (instant, table format); the others
    ask over the dashboard's time range.
    """

    title: str
    queries: tuple[Query, ...]
    kind: type[PanelBuilder] = timeseries.Panel
    width: int = 6
    unit: str = ""
    description: str = ""


class Look(TypedDict, total=False):
    """How a panel of a given kind shows its data (fields of :class:`PanelSpec`)."""

    width: int
    unit: str
    description: str


class Options(Look, total=False):
    """A panel's settings besides its title and queries (fields of :class:`PanelSpec`)."""

    kind: type[PanelBuilder]


def selected(metric: str, variable: str = RUN) -> str:
    """``metric``'s series whose label ``variable`` has a value chosen in the selector of that name."""
    return f'{metric}{{{variable}=~"${variable}"}}'


def mean(histogram: str) -> str:
    """The mean of a histogram's observations so far, per run: its sum over its count."""
    return f"{selected(histogram + '_sum')} / {selected(histogram + '_count')}"


def legend(text: str, label: str) -> str:
    """A legend: ``text`` then the series' value of ``label`` (``"run {{run}}"``); the label alone if no text."""
    return f"{text} {{{{{label}}}}}".strip()


def one(title: str, expr: str, text: str, label: str, **options: Unpack[Options]) -> PanelSpec:
    """A panel of one query whose legend is ``text`` and the series' value of ``label``."""
    return PanelSpec(title, (Query(expr, legend(text, label)),), **options)


def client(title: str, metric: str, **look: Unpack[Look]) -> PanelSpec:
    """A client metric of the chosen runs over time: one series per partition."""
    return one(title, selected(metric), "client", PARTITION, **look)


def per_repeat(title: str, metric: str, **look: Unpack[Look]) -> PanelSpec:
    """An orchestrator metric of each completed repeat of the chosen experiments, as bars."""
    return one(title, selected(metric, EXPERIMENT), "repeat", REPEAT, kind=bargauge.Panel, **look)


ROUND_DURATION = "fedimdb_server_round_duration_seconds"
ROWS: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = (
    (
        "Server: run progress",
        (
            PanelSpec(
                "Run", (Query(f"last_over_time({selected('fedimdb_server_run_info')}[1d])"),), table.Panel, width=12
            ),
            one("Run status", f"{selected('fedimdb_server_run_status')} == 1", "", STATUS, kind=stat.Panel),
            one("Round in progress", selected("fedimdb_server_round"), "run", RUN, kind=stat.Panel),
            one("Rounds completed", selected("fedimdb_server_rounds_completed_total"), "run", RUN),
            PanelSpec(
                "Round duration",
                (
                    Query(mean(ROUND_DURATION), legend("mean", RUN)),
                    Query(
                        f"histogram_quantile(0.9, sum by (le, {RUN}) ({selected(ROUND_DURATION + '_bucket')}))",
                        legend("p90", RUN),
                    ),
                ),
                unit="s",
            ),
            one("Aggregation time (mean)", mean("fedimdb_server_aggregation_seconds"), "", RUN, unit="s"),
            PanelSpec(
                "Time in the current round",
                (
                    Query(
                        f"time() - {selected('fedimdb_server_round_started_timestamp_seconds')}", legend("elapsed", RUN)
                    ),
                    Query(selected("fedimdb_server_round_timeout_seconds"), legend("timeout", RUN)),
                ),
                unit="s",
            ),
        ),
    ),
    (
        "Server: clients and traffic",
        (
            one("Nodes online", selected("fedimdb_server_nodes_online"), "", RUN),
            PanelSpec(
                "Clients per round",
                tuple(
                    Query(selected(f"fedimdb_server_clients_{outcome}"), legend(outcome, RUN))
                    for outcome in ("sampled", "replied", "failed")
                ),
            ),
            one(
                "Rounds since each client's last update",
                f"{selected('fedimdb_server_round')} - on ({RUN}) group_right {selected('fedimdb_server_client_last_round')}",
                "client",
                PARTITION,
                description="2 or more: the FedimdbClientSilent alert",
            ),
            PanelSpec(
                "Weights sent / received",
                (
                    Query(selected("fedimdb_server_sent_bytes_total"), legend("sent", RUN)),
                    Query(selected("fedimdb_server_received_bytes_total"), legend("received", RUN)),
                ),
                unit="bytes",
            ),
        ),
    ),
    (
        "Server: central evaluation",
        (
            one("Central accuracy", selected("fedimdb_server_central_accuracy"), "", RUN, width=8, unit="percentunit"),
            one("Central loss", selected("fedimdb_server_central_loss"), "", RUN, width=8),
            one(
                "Privacy spent (epsilon)",
                selected("fedimdb_server_privacy_epsilon"),
                "",
                RUN,
                width=8,
                description="Differential privacy: the epsilon the run has spent, at its dp-delta; +Inf: dp off",
            ),
        ),
    ),
    (
        "Clients (one series per partition)",
        (
            client("Reviews trained", "fedimdb_client_samples_trained_total"),
            client("Training time", "fedimdb_client_train_seconds_total", unit="s"),
            client("Training speed", "fedimdb_client_samples_per_second", unit="reqps"),
            client("Local train loss", "fedimdb_client_train_loss"),
            client("Local validation loss", "fedimdb_client_eval_loss"),
            client("Local validation accuracy", "fedimdb_client_eval_accuracy", unit="percentunit"),
            client("Update L2 norm", "fedimdb_client_update_norm"),
            client("Last round answered", "fedimdb_client_last_round"),
            client("ClientApp resident memory", "fedimdb_client_process_resident_memory_bytes", width=12, unit="bytes"),
        ),
    ),
    (
        "Experiment (orchestrate.py)",
        (
            PanelSpec(
                "Repeats",
                (
                    Query(selected("fedimdb_repeats_planned", EXPERIMENT), "planned"),
                    Query(selected("fedimdb_repeats_completed_total", EXPERIMENT), "completed"),
                    Query(selected("fedimdb_repeats_failed_total", EXPERIMENT), "failed attempts"),
                ),
            ),
            PanelSpec(
                "Repeat and round in progress",
                (
                    Query(selected("fedimdb_current_repeat", EXPERIMENT), "repeat"),
                    Query(selected("fedimdb_current_round", EXPERIMENT), "round"),
                ),
            ),
            one("ETA", selected("fedimdb_eta_seconds", EXPERIMENT), "", EXPERIMENT, kind=stat.Panel, unit="s"),
            per_repeat("Final accuracy per repeat", "fedimdb_final_accuracy", unit="percentunit"),
            per_repeat("Final loss per repeat", "fedimdb_final_loss", width=12),
            per_repeat("Repeat duration", "fedimdb_repeat_duration_seconds", width=12, unit="s"),
        ),
    ),
)
VARIABLES = ((RUN, "Run", "fedimdb_server_run_info"), (EXPERIMENT, "Experiment", "fedimdb_repeats_planned"))


def datasource(path: Path = DATASOURCES) -> DataSourceRef:
    """The Prometheus datasource that Grafana is provisioned with (its type and uid, read from ``path``)."""
    (source,) = yaml.safe_load(path.read_text())["datasources"]
    return DataSourceRef(type_val=source["type"], uid=source["uid"])


def target(query: Query, ref_id: str, source: DataSourceRef, instant: bool) -> prometheus.Dataquery:
    """One Prometheus query of a panel.

    Parameters
    ----------
    query : Query
        Its PromQL and legend.
    ref_id : str
        Grafana's name for it within the panel: A, B, …
    source : DataSourceRef
        The Prometheus datasource.
    instant : bool
        Ask for the latest values only, as a table (a ``table`` panel), not over the time range.
    """
    built = prometheus.Dataquery().ref_id(ref_id).expr(query.expr).legend_format(query.legend).datasource(source)
    return built.instant().format(PromQueryFormat.TABLE) if instant else built


def panel(spec: PanelSpec, panel_id: int, source: DataSourceRef) -> PanelBuilder:
    """The builder of one panel.

    Parameters
    ----------
    spec : PanelSpec
        What it shows and how.
    panel_id : int
        Its id, unique in the dashboard.
    source : DataSourceRef
        The Prometheus datasource, of the panel and of each of its queries (A, B, … in order).

    Returns
    -------
    PanelBuilder
        A builder of ``spec.kind``, ``HEIGHT`` high; ``Dashboard.with_panel`` places it.
    """
    built = spec.kind().id(panel_id).title(spec.title).datasource(source).height(HEIGHT).span(spec.width)
    for ref_id, query in zip(ascii_uppercase, spec.queries, strict=False):
        built.with_target(target(query, ref_id, source, instant=spec.kind is table.Panel))
    if spec.unit:
        built.unit(spec.unit)
    if spec.description:
        built.description(spec.description)
    return built


def variable(name: str, label: str, metric: str, source: DataSourceRef) -> QueryVariable:
    """A selector of the dashboard: several values at once, all of them by default (the regex ``.*``).

    Parameters
    ----------
    name : str
        The label whose values it offers; the variable has its name (``$run`` in the queries).
    label : str
        Its caption on the dashboard.
    metric : str
        The metric whose series give the values (``label_values``), refreshed with the time range.
    source : DataSourceRef
        The Prometheus datasource.
    """
    query = f"label_values({metric}, {name})"
    everything = VariableOption(selected=True, text=["All"], value=["$__all"])
    return (
        QueryVariable(name)
        .label(label)
        .datasource(source)
        .query({"query": query, "refId": "vars"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(everything)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )


def build(source: DataSourceRef | None = None) -> Dashboard:
    """The fedimdb dashboard: its settings, selectors, then each row and its panels, numbered 1, 2, …"""
    source = source or datasource()
    dashboard = (
        Dashboard(TITLE)
        .uid(UID)
        .tags(TAGS)
        .description(DESCRIPTION)
        .timezone(TimeZoneBrowser)
        .editable()
        .refresh("5s")
        .time("now-1h", "now")
        .version(1)
    )
    for name, label, metric in VARIABLES:
        dashboard.with_variable(variable(name, label, metric, source))
    ids = itertools.count(1)
    for title, specs in ROWS:
        dashboard.with_row(Row(title).id(next(ids)))
        for spec in specs:
            dashboard.with_panel(panel(spec, next(ids), source))
    return dashboard


def render(dashboard: Dashboard | None = None) -> str:
    """The dashboard as the JSON Grafana provisions: keys sorted, two-space indent, a final newline."""
    return json.dumps((dashboard or build()).build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def stale(path: Path, text: str) -> str:
    """Why the file ``path`` does not hold ``text``; empty if it does."""
    if not path.exists():
        return f"{path} is missing"
    return "" if path.read_text() == text else f"{path} is not what monitoring/grafana_dashboard.py builds"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboard JSON, or with ``--check`` say whether the written one is current."""
    p = argparse.ArgumentParser(prog="python -m monitoring.grafana_dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DASHBOARD, help="the dashboard JSON (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if --out differs from what is built")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        problem = stale(args.out, text)
        if problem:
            print(f"{problem}: run python -m monitoring.grafana_dashboard and commit the file", file=sys.stderr)
        return 1 if problem else 0
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
