"""A run's weight_stats.csv and client_updates.csv read into a report: what moved, who stood out, what went wrong.

Reading the two files (:func:`read_tables`, :func:`read_run`, :func:`read_path`) is kept apart from the
computation (:func:`build_report`, pure) and from the text (:func:`render_text`). An experiment's
report (:class:`ExperimentReport`) is its repeats' reports, keyed by repeat.
"""

from __future__ import annotations

import contextlib
import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedimdb.artifacts import CLIENT_UPDATES_FILE, RUN_FILE, WEIGHT_STATS_FILE, read_csv, read_json
from fedimdb.config import SECAGG_OFF, config_key
from fedimdb.run_record import Privacy, RunRecord
from fedimdb.weights import GROUP, MODEL, TENSOR

EXPLODING = 10.0  # a round's model update norm over this many times the median of the earlier rounds'
VANISHING = 1e-7  # a round's relative model update below this: the model stood still
REPEAT_DIR = re.compile(r"^repeat-(\d+)$")  # an experiment's repeats; set-aside ones (repeat-1.failed-1) are not
WEIGHT_STATS_KEY = "weight-stats"  # run.json's config key that switches the two files on
HIDDEN_BY_SECAGG = "not observable (secure aggregation)"  # what a securely aggregated run says of its clients
NONFINITE, EXPLODED, VANISHED, FROZEN = "nonfinite", "exploding", "vanishing", "never-moved"  # anomaly kinds
Row = TypeVar("Row")


class InspectError(RuntimeError):
    """A folder, file or round cannot be inspected; the message names the fix."""


@dataclass(frozen=True)
class StatRow:
    """The columns of a weight_stats.csv row that the report reads (update columns None for round 0)."""

    round: int
    scope: str
    name: str
    nonfinite: int
    update_l2_norm: float | None
    relative_update: float | None

    @classmethod
    def parse(cls, row: Mapping[str, str]) -> StatRow:
        return cls(
            int(row["round"]),
            row["scope"],
            row["name"],
            int(row["nonfinite"]),
            _optional(row["update_l2_norm"]),
            _optional(row["relative_update"]),
        )


@dataclass(frozen=True)
class ClientRow:
    """The columns of a client_updates.csv row that the report reads."""

    round: int
    partition_id: int
    update_l2_norm: float
    cosine_to_aggregate: float
    norm_z: float
    cosine_z: float
    outlier: bool
    nonfinite: int

    @classmethod
    def parse(cls, row: Mapping[str, str]) -> ClientRow:
        if row["outlier"] not in ("True", "False"):
            raise ValueError(f"outlier is {row['outlier']!r}, not True or False")
        return cls(
            int(row["round"]),
            int(row["partition_id"]),
            float(row["update_l2_norm"]),
            float(row["cosine_to_aggregate"]),
            float(row["norm_z"]),
            float(row["cosine_z"]),
            row["outlier"] == "True",
            int(row["nonfinite"]),
        )


@dataclass(frozen=True)
class RunTables:
    """The two statistics files of one run, parsed."""

    stats: list[StatRow]
    clients: list[ClientRow]


@dataclass(frozen=True)
class GroupMovement:
    """How far a layer group moved over the run."""

    group: str
    total_update_l2_norm: float  # summed over rounds 1..N
    mean_relative_update: float | None  # None when no round has one (round 0 only, or a zero norm)
    rounds: int  # rounds with an update


@dataclass(frozen=True)
class Outlier:
    """A client update that client_updates.csv flags as an outlier."""

    round: int
    partition_id: int
    norm_z: float
    cosine_z: float
    update_l2_norm: float
    cosine_to_aggregate: float


@dataclass(frozen=True)
class Anomaly:
    """Something wrong in a run: NaN/Inf values, an exploding or vanishing update, a layer group that never moved."""

    kind: str  # NONFINITE, EXPLODED, VANISHED or FROZEN
    round: int | None  # None: the whole run
    subject: str  # "tensor bert.pooler.dense.bias", "client 3", "model", "layer group pooler"
    detail: str

    def __str__(self) -> str:
        where = "" if self.round is None else f"round {self.round}: "
        return f"{where}{self.subject}: {self.detail}"


@dataclass(frozen=True)
class ClientCosine:
    """One cell of the client-cosine heatmap."""

    round: int
    partition_id: int
    cosine: float


@dataclass
class RunReport:
    """What the weight statistics of one run say."""

    run: str
    rounds: int = 0  # the last round described
    groups: list[GroupMovement] = field(default_factory=list)  # most moved first
    update_norms: dict[int, float] = field(default_factory=dict)  # round -> the whole model's update L2 norm
    relative_updates: dict[int, float] = field(default_factory=dict)  # round -> the whole model's relative update
    group_update_norms: dict[str, dict[int, float]] = field(default_factory=dict)  # group -> round -> norm
    outliers: list[Outlier] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    cosines: list[ClientCosine] = field(default_factory=list)
    privacy: Privacy | None = None  # run.json's differential-privacy block (None: dp off)
    secure_aggregation: str = SECAGG_OFF  # run.json's secure-aggregation setting

    @property
    def secured(self) -> bool:
        """Whether the run was securely aggregated: no client's update was observable."""
        return self.secure_aggregation != SECAGG_OFF

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers become null (the anomalies say where they were)."""
        out = asdict(self)
        out["anomalies"] = [{**asdict(a), "text": str(a)} for a in self.anomalies]
        return _finite(out)


@dataclass
class ExperimentReport:
    """The reports of an experiment's repeats."""

    experiment: str
    repeats: dict[int, RunReport] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)  # repeat -> why it has no report

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "experiment": self.experiment,
            "repeats": {k: r.as_dict() for k, r in self.repeats.items()},
            "skipped": dict(self.skipped),
        }

    def runs(self) -> dict[str, RunReport]:
        """The repeats' reports by folder name."""
        return {rep.run: rep for rep in self.repeats.values()}


def _optional(text: str) -> float | None:
    return float(text) if text != "" else None


def _finite(value: Any) -> Any:
    """``value`` with every NaN or Inf float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------- reading


def read_tables(run_dir: Path) -> RunTables:
    """weight_stats.csv and client_updates.csv of ``run_dir``, parsed; InspectError naming the fix if missing."""
    missing = [name for name in (WEIGHT_STATS_FILE, CLIENT_UPDATES_FILE) if not (run_dir / name).is_file()]
    if missing:
        raise InspectError(f"{run_dir}: no {' or '.join(missing)}: {_why_no_stats(run_dir)}")
    return RunTables(
        _parse(run_dir / WEIGHT_STATS_FILE, StatRow.parse), _parse(run_dir / CLIENT_UPDATES_FILE, ClientRow.parse)
    )


def _why_no_stats(run_dir: Path) -> str:
    """Why a folder has no weight statistics, and what to do."""
    if not (run_dir / RUN_FILE).is_file():
        return "not a run folder (no run.json) nor an experiment folder (no repeat-K folders); give one of those"
    config = read_json(run_dir / RUN_FILE).get("config", {})
    if WEIGHT_STATS_KEY not in config:
        return "the run predates weight statistics; run it again to get them"
    if not config[WEIGHT_STATS_KEY]:
        return f"the run ran with {WEIGHT_STATS_KEY}=false; run it again with {WEIGHT_STATS_KEY}=true"
    return "the run has not finished a round (yet); inspect it after its first round"


def _parse(path: Path, parse: Callable[[Mapping[str, str]], Row]) -> list[Row]:
    """Every row of a CSV file through ``parse``; InspectError naming the line when one cannot be read."""
    parsed = []
    for line, row in enumerate(read_csv(path), start=2):
        try:
            parsed.append(parse(row))
        except (KeyError, ValueError, TypeError) as exc:
            raise InspectError(
                f"{path}: line {line} unreadable ({type(exc).__name__}: {exc}); the file may be "
                "damaged: check the run with fedimdb.artifacts.verify_run"
            ) from None
    return parsed


def read_run(run_dir: Path) -> RunReport:
    """The report of one run folder, with run.json's differential-privacy block and secure-aggregation setting."""
    report = build_report(run_dir.name, read_tables(run_dir))
    with contextlib.suppress(OSError, ValueError):  # no or a damaged run.json: the report still describes the weights
        record = RunRecord.from_json(read_json(run_dir / RUN_FILE))
        report.privacy = record.privacy
        report.secure_aggregation = str(record.config.get(config_key("secure_aggregation"), SECAGG_OFF))
    return report


def repeat_dirs(exp_dir: Path) -> dict[int, Path]:
    """An experiment folder's repeat-K folders by K (set-aside folders such as repeat-1.failed-1 left out)."""
    found = {}
    for path in exp_dir.iterdir():
        if (match := REPEAT_DIR.match(path.name)) and path.is_dir():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def read_experiment(exp_dir: Path, repeats: Mapping[int, Path]) -> ExperimentReport:
    """The reports of the repeats that have weight statistics; the others listed with the reason."""
    report = ExperimentReport(exp_dir.name)
    for k, path in repeats.items():
        try:
            report.repeats[k] = read_run(path)
        except InspectError as exc:
            report.skipped[k] = str(exc)
    if not report.repeats:
        raise InspectError(
            f"{exp_dir}: none of its {len(repeats)} repeats can be inspected; first: "
            f"{next(iter(report.skipped.values()))}"
        )
    return report


def read_path(path: Path) -> RunReport | ExperimentReport:
    """A run folder's report, or an experiment folder's (any folder holding repeat-K folders)."""
    if not path.is_dir():
        raise InspectError(f"{path}: no such folder; give a run folder (repeat-K) or an experiment folder")
    repeats = repeat_dirs(path)
    return read_experiment(path, repeats) if repeats else read_run(path)


# ---------------------------------------------------------------- the report (pure)


def build_report(name: str, tables: RunTables) -> RunReport:
    """The report of one run from its parsed statistics."""
    groups = [r for r in tables.stats if r.scope == GROUP]
    model = sorted((r for r in tables.stats if r.scope == MODEL), key=lambda r: r.round)
    norms = {r.round: r.update_l2_norm for r in model if r.update_l2_norm is not None}
    anomalies = [*nonfinite_anomalies(tables), *exploding(norms), *vanishing(model), *never_moved(groups)]
    return RunReport(
        run=name,
        rounds=max((r.round for r in tables.stats), default=0),
        groups=rank_groups(groups),
        update_norms=norms,
        relative_updates={r.round: r.relative_update for r in model if r.relative_update is not None},
        group_update_norms=group_norms(groups),
        outliers=outliers(tables.clients),
        anomalies=anomalies,
        cosines=[ClientCosine(c.round, c.partition_id, c.cosine_to_aggregate) for c in tables.clients],
    )


def group_norms(groups: Iterable[StatRow]) -> dict[str, dict[int, float]]:
    """Layer group -> round -> update L2 norm (rounds with an update only), groups in file order."""
    out: dict[str, dict[int, float]] = {}
    for r in groups:
        out.setdefault(r.name, {})
        if r.update_l2_norm is not None:
            out[r.name][r.round] = r.update_l2_norm
    return out


def rank_groups(groups: Sequence[StatRow]) -> list[GroupMovement]:
    """Layer groups by their update norms summed over the rounds, most moved first (NaN sums last)."""
    moves = []
    for name, norms in group_norms(groups).items():
        relative = [r.relative_update for r in groups if r.name == name and r.relative_update is not None]
        mean = statistics.fmean(relative) if relative else None
        moves.append(GroupMovement(name, math.fsum(norms.values()), mean, len(norms)))
    return sorted(moves, key=lambda m: (math.isnan(m.total_update_l2_norm), -m.total_update_l2_norm, m.group))


def outliers(clients: Iterable[ClientRow]) -> list[Outlier]:
    """The client updates flagged as outliers, by round and partition."""
    flagged = [
        Outlier(c.round, c.partition_id, c.norm_z, c.cosine_z, c.update_l2_norm, c.cosine_to_aggregate)
        for c in clients
        if c.outlier
    ]
    return sorted(flagged, key=lambda o: (o.round, o.partition_id))


def nonfinite_anomalies(tables: RunTables) -> list[Anomaly]:
    """NaN/Inf values: per tensor (the model row only in a round where no tensor row says which), per client."""
    found = [
        Anomaly(NONFINITE, r.round, f"tensor {r.name}", f"holds {r.nonfinite} NaN/Inf values")
        for r in tables.stats
        if r.scope == TENSOR and r.nonfinite > 0
    ]
    named = {a.round for a in found}
    found += [
        Anomaly(NONFINITE, r.round, "model", f"holds {r.nonfinite} NaN/Inf values")
        for r in tables.stats
        if r.scope == MODEL and r.nonfinite > 0 and r.round not in named
    ]
    found += [
        Anomaly(NONFINITE, c.round, f"client {c.partition_id}", f"its update holds {c.nonfinite} NaN/Inf values")
        for c in tables.clients
        if c.nonfinite > 0
    ]
    return found


def exploding(norms: Mapping[int, float]) -> list[Anomaly]:
    """Rounds whose model update norm is over EXPLODING x the median of the earlier rounds' (when that is > 0)."""
    found = []
    rounds = sorted(norms)
    for i, k in enumerate(rounds):
        earlier = [norms[j] for j in rounds[:i] if math.isfinite(norms[j])]
        median = statistics.median(earlier) if earlier else 0.0
        if median > 0 and norms[k] > EXPLODING * median:
            detail = f"update L2 norm {norms[k]:.4g}, {norms[k] / median:.3g}x the median {median:.4g} of rounds before"
            found.append(Anomaly(EXPLODED, k, "model", detail))
    return found


def vanishing(model: Iterable[StatRow]) -> list[Anomaly]:
    """Rounds whose relative model update is below VANISHING: the global model stood still."""
    return [
        Anomaly(VANISHED, r.round, "model", f"relative update {r.relative_update:.3g} < {VANISHING:g}: stood still")
        for r in model
        if r.relative_update is not None and r.relative_update < VANISHING
    ]


def never_moved(groups: Iterable[StatRow]) -> list[Anomaly]:
    """Layer groups whose update norm is 0 in every round that has one (round >= 1)."""
    norms = group_norms(groups)
    return [
        Anomaly(FROZEN, None, f"layer group {name}", f"never moved: update L2 norm 0 in all {len(by_round)} rounds")
        for name, by_round in norms.items()
        if by_round and all(v == 0 for v in by_round.values())
    ]


# ---------------------------------------------------------------- text


def render_text(report: RunReport | ExperimentReport | Sequence[RunReport], top: int = 10) -> str:
    """A report as readable text: per run, the layer groups that moved most (``top``), norms, outliers, anomalies."""
    if isinstance(report, ExperimentReport):
        head = [f"experiment {report.experiment}: {len(report.repeats)} repeat(s) inspected"]
        head += [f"  repeat-{k} skipped: {why}" for k, why in report.skipped.items()]
        runs: Sequence[RunReport] = list(report.repeats.values())
    else:
        head, runs = [], [report] if isinstance(report, RunReport) else list(report)
    blocks = ["\n".join(head)] if head else []
    return "\n\n".join(blocks + ["\n".join(_run_lines(r, top)) for r in runs])


def _run_lines(rep: RunReport, top: int) -> list[str]:
    """The text of one run's report."""
    partitions = len({c.partition_id for c in rep.cosines})
    lines = [f"== {rep.run}: rounds 0..{rep.rounds}, {len(rep.groups)} layer groups, {partitions} clients"]
    lines.append(f"layer groups that moved most (of {len(rep.groups)}): summed update L2 norm, mean relative update")
    lines += [
        f"  {g.group:<20} {g.total_update_l2_norm:12.4g}  {_num(g.mean_relative_update, '.3g'):>10}"
        for g in rep.groups[:top]
    ]
    lines.append("update L2 norm of the whole model per round (relative update):")
    lines += [
        f"  round {k:>3}: {v:.4g} ({_num(rep.relative_updates.get(k), '.3g')})" for k, v in rep.update_norms.items()
    ]
    lines.append("outlier clients:" + (f" {HIDDEN_BY_SECAGG}" if rep.secured else "" if rep.outliers else " none"))
    lines += [
        f"  round {o.round}: client {o.partition_id} (norm z {o.norm_z:.2f}, cosine z {o.cosine_z:.2f}, "
        f"update L2 norm {o.update_l2_norm:.4g}, cosine {o.cosine_to_aggregate:.3f})"
        for o in rep.outliers
    ]
    lines.append("anomalies:" + ("" if rep.anomalies else " none"))
    lines += [f"  [{a.kind}] {a}" for a in rep.anomalies]
    lines.append(f"differential privacy: {_privacy(rep.privacy)}")
    held = "the server held no client's update" if rep.secured else "the server held every client's update"
    lines.append(f"secure aggregation: {rep.secure_aggregation} ({held})")
    return lines


def _privacy(p: Privacy | None) -> str:
    """The guarantee of a run, in a line."""
    if p is None:
        return "off"
    stopped = f"; {p.stopped}" if p.stopped else ""
    return (
        f"{p.mechanism}, epsilon {p.epsilon:.4g} at delta {p.delta:g} after {p.releases} rounds (noise multiplier "
        f"{p.noise_multiplier:g}, clipping norm {p.clipping_norm:g}){stopped}"
    )


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
