"""python -m fedimdb.inspect: reports, plots and the CLI on synthetic weight_stats.csv / client_updates.csv with
known answers; ``evaluate`` on a synthetic run folder (the tiny model, weights archived as the ServerApp does)
against fedimdb.training.evaluate called directly, as the ServerApp calls it."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from fedimdb.artifacts import (
    CLIENT_UPDATES_FILE,
    FINAL_WEIGHTS,
    ROUNDS_FILE,
    RUN_FILE,
    WEIGHT_STATS_FILE,
    WEIGHTS_DIR,
    RunArtifacts,
    csv_bytes,
    round_weights_name,
    utc_now,
    write_bytes_atomic,
    write_json_atomic,
)
from fedimdb.config import SECAGG_PLUS, RunConfig
from fedimdb.data import MANIFEST, Examples, read_split
from fedimdb.inspect.cli import PLOTS_DIR, USAGE_ERROR, main
from fedimdb.inspect.evaluate import evaluate_round
from fedimdb.inspect.plots import PLOT_FILES, cosines_figure, norms_figure, report_runs, write_plots
from fedimdb.inspect.report import (
    EXPLODED,
    EXPLODING,
    FROZEN,
    NONFINITE,
    VANISHED,
    VANISHING,
    ExperimentReport,
    InspectError,
    RunReport,
    read_path,
    read_run,
    render_text,
)
from fedimdb.model import load_model
from fedimdb.run_record import RunRecord
from fedimdb.tokens import CACHE_VAR
from fedimdb.training import evaluate, load_state
from fedimdb.weights import CLIENT_UPDATE_COLUMNS, GROUP, MODEL, TENSOR, WEIGHT_STATS_COLUMNS, WHOLE_MODEL
from server.records import ROUND_COLUMNS
from tests.held_out import RECIPE, held_out_folder

pytestmark = pytest.mark.timeout(300)

ROUNDS = 3
PARTITIONS = 4
# layer group -> its update L2 norm in rounds 1..3; summed: layer.0 6, embeddings 3, classifier 1.5, pooler 0
GROUP_UPDATES = {"embeddings": 1.0, "layer.0": 2.0, "classifier": 0.5, "pooler": 0.0}
TENSORS = {
    "embeddings": "bert.embeddings.word_embeddings.weight",
    "layer.0": "bert.encoder.layer.0.output.dense.weight",
    "classifier": "classifier.weight",
    "pooler": "bert.pooler.dense.weight",
}


# ---------------------------------------------------------------- synthetic statistics


def stat_row(
    server_round: int,
    scope: str,
    name: str,
    group: str,
    update: float | None = None,
    relative: float | None = None,
    nonfinite: int = 0,
) -> dict[str, Any]:
    """A weight_stats.csv row (moments are filler: the report does not read them)."""
    return {
        "round": server_round,
        "scope": scope,
        "name": name,
        "group": group,
        "numel": 10,
        "l2_norm": 1.0,
        "mean": 0.0,
        "std": 1.0,
        "min": -1.0,
        "max": 1.0,
        "zero_fraction": 0.0,
        "nonfinite": nonfinite,
        "update_l2_norm": "" if update is None else update,
        "relative_update": "" if relative is None else relative,
    }


def client_row(
    server_round: int,
    partition: int,
    cosine: float = 0.5,
    norm_z: float = 0.0,
    cosine_z: float = 0.0,
    outlier: bool = False,
    nonfinite: int = 0,
) -> dict[str, Any]:
    """A client_updates.csv row."""
    return {
        "round": server_round,
        "partition_id": partition,
        "num_examples": 10,
        "example_share": 1 / PARTITIONS,
        "update_l2_norm": 1.0,
        "cosine_to_aggregate": cosine,
        "distance_to_aggregate": 0.5,
        "norm_z": norm_z,
        "cosine_z": cosine_z,
        "outlier": outlier,
        "nonfinite": nonfinite,
    }


def healthy_stats(model_norms: list[float] | None = None, relative: float = 0.01) -> list[dict[str, Any]]:
    """Rounds 0..N: a tensor per group, GROUP_UPDATES per group, the model's ``model_norms`` (default: 3 in 1..ROUNDS)."""
    norms = model_norms or [3.0] * ROUNDS
    rows = []
    for k in range(len(norms) + 1):
        for group, update in GROUP_UPDATES.items():
            u, rel = (None, None) if k == 0 else (update, update / 100)
            rows.append(stat_row(k, TENSOR, TENSORS[group], group, u, rel))
            rows.append(stat_row(k, GROUP, group, group, u, rel))
        rows.append(stat_row(k, MODEL, WHOLE_MODEL, "", *((None, None) if k == 0 else (norms[k - 1], relative))))
    return rows


def healthy_clients() -> list[dict[str, Any]]:
    return [client_row(k, p, cosine=0.1 * p) for k in range(1, ROUNDS + 1) for p in range(PARTITIONS)]


def write_run(folder: Path, stats: list[dict[str, Any]], clients: list[dict[str, Any]]) -> Path:
    """A run folder holding only the two statistics files."""
    write_bytes_atomic(folder / WEIGHT_STATS_FILE, csv_bytes(WEIGHT_STATS_COLUMNS, stats))
    write_bytes_atomic(folder / CLIENT_UPDATES_FILE, csv_bytes(CLIENT_UPDATE_COLUMNS, clients))
    return folder


def kinds(report: RunReport) -> list[tuple[str, int | None, str]]:
    return [(a.kind, a.round, a.subject) for a in report.anomalies]


@pytest.fixture
def healthy(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", healthy_stats(), healthy_clients())


# ---------------------------------------------------------------- the report


def test_layer_groups_ranked_by_summed_update_norm(healthy: Path) -> None:
    report = read_run(healthy)
    assert [(g.group, g.total_update_l2_norm, g.rounds) for g in report.groups] == [
        ("layer.0", 6.0, 3),
        ("embeddings", 3.0, 3),
        ("classifier", 1.5, 3),
        ("pooler", 0.0, 3),
    ]
    assert report.groups[0].mean_relative_update == pytest.approx(0.02)
    assert report.update_norms == {1: 3.0, 2: 3.0, 3: 3.0} and report.rounds == ROUNDS
    assert report.group_update_norms["layer.0"] == {1: 2.0, 2: 2.0, 3: 2.0}


def test_a_healthy_run_has_no_outliers_and_only_the_frozen_group(healthy: Path) -> None:
    report = read_run(healthy)
    assert report.outliers == []
    assert kinds(report) == [(FROZEN, None, "layer group pooler")]


def test_outlier_clients_listed(tmp_path: Path) -> None:
    clients = healthy_clients()
    clients[PARTITIONS + 1] = client_row(2, 1, cosine=-0.4, norm_z=9.5, cosine_z=-4.0, outlier=True)
    clients[2 * PARTITIONS + 3] = client_row(3, 3, norm_z=-5.0, outlier=True)
    report = read_run(write_run(tmp_path, healthy_stats(), clients))
    assert [(o.round, o.partition_id, o.norm_z, o.cosine_z) for o in report.outliers] == [
        (2, 1, 9.5, -4.0),
        (3, 3, -5.0, 0.0),
    ]
    assert "round 2: client 1 (norm z 9.50, cosine z -4.00" in render_text(report)


def test_nonfinite_values_are_anomalies_naming_the_tensor_and_the_client(tmp_path: Path) -> None:
    stats = healthy_stats()
    for row in stats:  # round 2: 3 NaN in the classifier's tensor, so in its group and in the model
        if row["round"] == 2 and row["group"] in ("classifier", ""):
            row["nonfinite"] = 3
    clients = healthy_clients()
    clients[PARTITIONS + 2]["nonfinite"] = 7  # round 2, partition 2
    report = read_run(write_run(tmp_path, stats, clients))
    nonfinite = [a for a in report.anomalies if a.kind == NONFINITE]
    assert [(a.round, a.subject) for a in nonfinite] == [(2, f"tensor {TENSORS['classifier']}"), (2, "client 2")]
    assert "7 NaN/Inf" in str(nonfinite[1])


def test_exploding_update_norm_over_ten_times_the_earlier_median(tmp_path: Path) -> None:
    norms = [1.0, 3.0, 2.0 * EXPLODING, 2.0 * EXPLODING + 0.01, 500.0]
    stats = [r for r in healthy_stats() if r["scope"] != MODEL]
    stats += [stat_row(0, MODEL, WHOLE_MODEL, "")]
    stats += [stat_row(k, MODEL, WHOLE_MODEL, "", n, 0.01) for k, n in enumerate(norms, start=1)]
    report = read_run(write_run(tmp_path, stats, healthy_clients()))
    # round 3: 20 is 10x the median 2 of (1, 3), not over; round 4: 20.01 < 10x the median 3 of (1, 3, 20);
    # round 5: 500 > 10x the median 11.5 of (1, 3, 20, 20.01): exploded
    assert [(a.round, a.subject) for a in report.anomalies if a.kind == EXPLODED] == [(5, "model")]


def test_exploding_at_exactly_ten_times_is_not_flagged_and_just_over_is(tmp_path: Path) -> None:
    report = read_run(write_run(tmp_path, healthy_stats([1.0, EXPLODING, 0.5]), healthy_clients()))
    assert not [a for a in report.anomalies if a.kind == EXPLODED]
    report = read_run(write_run(tmp_path, healthy_stats([1.0, EXPLODING * 1.001, 0.5]), healthy_clients()))
    assert [a.round for a in report.anomalies if a.kind == EXPLODED] == [2]


def test_vanishing_relative_update(tmp_path: Path) -> None:
    stats = healthy_stats()
    for row in stats:
        if row["scope"] == MODEL and row["round"] == 2:
            row["relative_update"] = VANISHING / 10
        if row["scope"] == MODEL and row["round"] == 3:
            row["relative_update"] = VANISHING  # not below
    report = read_run(write_run(tmp_path, stats, healthy_clients()))
    assert [(a.round, a.subject) for a in report.anomalies if a.kind == VANISHED] == [(2, "model")]


def test_a_group_that_moved_once_is_not_frozen(tmp_path: Path) -> None:
    stats = healthy_stats()
    for row in stats:
        if row["scope"] == GROUP and row["name"] == "pooler" and row["round"] == 3:
            row["update_l2_norm"] = 1e-6
    assert not [a for a in read_run(write_run(tmp_path, stats, healthy_clients())).anomalies if a.kind == FROZEN]


def test_round_zero_only_has_nothing_to_rank_and_no_anomaly(tmp_path: Path) -> None:
    report = read_run(write_run(tmp_path, [r for r in healthy_stats() if r["round"] == 0], []))
    assert report.update_norms == {} and report.anomalies == [] and report.outliers == []
    assert {g.group: g.mean_relative_update for g in report.groups} == dict.fromkeys(GROUP_UPDATES)


def test_a_damaged_file_is_an_error_naming_it(tmp_path: Path) -> None:
    write_run(tmp_path, healthy_stats(), healthy_clients())
    (tmp_path / CLIENT_UPDATES_FILE).write_text("round,partition_id\n1,x\n")
    with pytest.raises(InspectError, match=f"{CLIENT_UPDATES_FILE}: line 2 unreadable"):
        read_run(tmp_path)


# ---------------------------------------------------------------- the command line


def test_json_output_parses_and_is_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = healthy_stats([3.0, 3.0, math.inf])  # an infinite norm: JSON null, not the invalid Infinity
    run = write_run(tmp_path / "run", stats, healthy_clients())
    assert main([str(run), "--json", "--no-plots"]) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert [g["group"] for g in out["groups"]] == ["layer.0", "embeddings", "classifier", "pooler"]
    assert out["update_norms"] == {"1": 3.0, "2": 3.0, "3": None}
    assert [a["kind"] for a in out["anomalies"]] == [EXPLODED, FROZEN]
    assert not (run / PLOTS_DIR).exists()


@pytest.mark.parametrize(
    ("run_json", "expected"),
    [
        (None, "not a run folder (no run.json)"),
        ({"config": {"weight-stats": False}}, "ran with weight-stats=false; run it again with weight-stats=true"),
        ({"config": {"seed": 1}}, "the run predates weight statistics"),
    ],
)
def test_cli_folder_without_the_statistics_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_json: dict | None, expected: str
) -> None:
    if run_json is not None:
        write_json_atomic(tmp_path / RUN_FILE, run_json)
    assert main([str(tmp_path)]) == USAGE_ERROR
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert expected in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / PLOTS_DIR).exists()


def test_cli_missing_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nowhere")]) == USAGE_ERROR
    assert "no such folder; give a run folder (repeat-K) or an experiment folder" in capsys.readouterr().err


def test_cli_text_report_and_plots_in_the_default_folder(healthy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(healthy)]) == 0
    captured = capsys.readouterr()
    assert "layer groups that moved most" in captured.out and "[never-moved] layer group pooler" in captured.out
    assert sorted(p.name for p in (healthy / PLOTS_DIR).iterdir()) == sorted(PLOT_FILES)
    assert captured.err.count("plot: ") == 2


# ---------------------------------------------------------------- plots


def test_plots_written_and_never_overwritten(healthy: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    first = write_plots(read_run(healthy), out)
    assert [p.name for p in first] == list(PLOT_FILES)
    before = {p: p.read_bytes() for p in first}
    assert all(data.startswith(b"\x89PNG") and len(data) > 1000 for data in before.values())
    second = write_plots(read_run(healthy), out)
    assert [p.name for p in second] == ["update-norms-2.png", "client-cosines-2.png"]
    assert {p: p.read_bytes() for p in first} == before


def panels(fig: Any) -> int:
    """Axes of a figure other than colorbars."""
    return len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"])


def experiment(tmp_path: Path) -> Path:
    """An experiment folder: repeat-0 and repeat-1 with statistics, a set-aside repeat-1.failed-1 without."""
    exp = tmp_path / "exp"
    write_run(exp / "repeat-0", healthy_stats(), healthy_clients())
    clients = healthy_clients()[: 2 * PARTITIONS]  # repeat 1: rounds 1 and 2 only
    write_run(exp / "repeat-1", healthy_stats([3.0, 3.0]), clients)
    (exp / "repeat-1.failed-1").mkdir()
    write_json_atomic(exp / "experiment.json", {})
    return exp


def test_experiment_with_two_repeats_gives_two_panels(tmp_path: Path) -> None:
    report = read_path(experiment(tmp_path))
    assert isinstance(report, ExperimentReport) and sorted(report.repeats) == [0, 1] and not report.skipped
    runs = report_runs(report)
    assert list(runs) == ["repeat-0", "repeat-1"]
    assert panels(cosines_figure(runs)) == 2 and panels(norms_figure(runs)) == 2
    paths = write_plots(report, tmp_path / "plots")
    assert all(p.stat().st_size > 0 for p in paths)
    text = render_text(report)
    assert "2 repeat(s) inspected" in text and "== repeat-0" in text and "== repeat-1" in text


def test_experiment_repeat_without_statistics_is_skipped_and_said(tmp_path: Path) -> None:
    exp = experiment(tmp_path)
    (exp / "repeat-2").mkdir()
    write_json_atomic(exp / "repeat-2" / RUN_FILE, {"config": {"weight-stats": False}})
    report = read_path(exp)
    assert isinstance(report, ExperimentReport) and list(report.skipped) == [2]
    assert "repeat-2 skipped:" in render_text(report) and "weight-stats=false" in report.skipped[2]
    assert json.loads(json.dumps(report.as_dict()))["repeats"].keys() == {"0", "1"}


# ---------------------------------------------------------------- evaluate


EVAL = {"eval-rows": 24, "batch-size": 8, "max-length": 32}


def synthetic_run(run_dir: Path, held_out: Path, final: bool = True) -> dict[int, Any]:
    """Rounds 0 and 1 of the tiny model archived as the ServerApp does; evaluated as it does; the results by round."""
    model, tokenizer = load_model("tiny", 3)
    config = RunConfig(
        model="tiny", device="cpu", held_out_dir=str(held_out), **{k.replace("-", "_"): v for k, v in EVAL.items()}
    )
    record = RunRecord(run_id=1, seed=3, config=config.as_dict(), data=RECIPE, versions={}, started=utc_now())
    artifacts = RunArtifacts(run_dir, record)
    with tempfile.TemporaryDirectory() as tmp:
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        artifacts.add_folder(Path(tmp), WEIGHTS_DIR)
    generator = torch.Generator().manual_seed(0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    states = {
        0: start,
        1: {
            k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
            for k, v in start.items()
        },
    }
    rows = read_split(held_out, "test").head(EVAL["eval-rows"])
    results = {}
    for k, state in states.items():
        artifacts.write_weights(round_weights_name(k), state)
        load_state(model, state)
        results[k] = evaluate(
            model,
            tokenizer,
            rows,
            batch_size=EVAL["batch-size"],
            max_length=EVAL["max-length"],
            device=torch.device("cpu"),
        )
    artifacts.record.initial_evaluation = results[0].as_dict()
    artifacts.save()
    row = {
        **dict.fromkeys(ROUND_COLUMNS, ""),
        "round": 1,
        "central_loss": results[1].loss,
        "central_accuracy": results[1].accuracy,
        "central_examples": results[1].num_examples,
    }
    artifacts.write_csv(ROUNDS_FILE, ROUND_COLUMNS, [row])
    if final:
        artifacts.write_weights(f"{WEIGHTS_DIR}/{FINAL_WEIGHTS}", states[1])
    return results


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[int, Any]]]:
    """A synthetic run (its tokenised rows cached in a temporary folder, not the user's cache)."""
    root = tmp_path_factory.mktemp("inspect-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_VAR, str(root / "cache"))
        held_out = held_out_folder(root / "shards" / "server")
        yield root / "run", synthetic_run(root / "run", held_out)


def test_evaluate_round_gives_what_the_server_computed_bit_for_bit(run_folder: tuple[Path, dict[int, Any]]) -> None:
    run_dir, results = run_folder
    assert results[0].loss != results[1].loss, "the two rounds' weights differ"
    for k in (0, 1):
        out = evaluate_round(run_dir, k)
        assert (out.accuracy, out.loss, out.examples) == (results[k].accuracy, results[k].loss, EVAL["eval-rows"])
        assert (out.recorded_accuracy, out.recorded_loss) == (results[k].accuracy, results[k].loss)
        assert out.same_rows and out.matches is True and out.device == "cpu"


def test_evaluate_round_of_a_run_without_final_weights(run_folder: tuple[Path, dict[int, Any]], tmp_path: Path) -> None:
    results = synthetic_run(tmp_path / "run", run_folder[0].parent / "shards" / "server", final=False)
    out = evaluate_round(tmp_path / "run", 1)
    assert (out.accuracy, out.loss) == (results[1].accuracy, results[1].loss)


def test_evaluate_on_a_parquet_file_and_fewer_rows(run_folder: tuple[Path, dict[int, Any]], tmp_path: Path) -> None:
    run_dir, _ = run_folder
    texts, labels = ["loved it, a great film", "awful, boring, the worst", "superb acting"], [1, 0, 1]
    pq.write_table(pa.table({"text": texts, "label": labels}), tmp_path / "mine.parquet")
    model, tokenizer = load_model("tiny", 0)
    load_state(model, load_file(run_dir / round_weights_name(1)))
    direct = evaluate(
        model,
        tokenizer,
        Examples(texts, labels),
        batch_size=EVAL["batch-size"],
        max_length=EVAL["max-length"],
        device=torch.device("cpu"),
    )
    out = evaluate_round(run_dir, 1, tmp_path / "mine.parquet")
    assert (out.accuracy, out.loss, out.examples) == (direct.accuracy, direct.loss, 3)
    assert not out.same_rows and out.matches is None and out.recorded_accuracy is not None
    fewer = evaluate_round(run_dir, 1, rows=5)
    assert fewer.examples == 5 and not fewer.same_rows and fewer.matches is None


def test_evaluate_errors_name_the_fix(run_folder: tuple[Path, dict[int, Any]], tmp_path: Path) -> None:
    run_dir, _ = run_folder
    with pytest.raises(InspectError, match=r"round 2 is out of range: .* rounds 0\.\.1; pass --round"):
        evaluate_round(run_dir, 2)
    with pytest.raises(InspectError, match="no such file"):
        evaluate_round(run_dir, 1, tmp_path / "none.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InspectError, match="unreadable"):
        evaluate_round(run_dir, 1, tmp_path / "bad.parquet")
    with pytest.raises(InspectError, match=r"--held-out .* no manifest\.json"):
        evaluate_round(run_dir, 1, held_out=tmp_path)
    other = held_out_folder(tmp_path / "other")
    write_json_atomic(other / MANIFEST, {**json.loads((other / MANIFEST).read_text()), "recipe": {"seed": 9}})
    with pytest.raises(InspectError, match="prepared with other settings"):
        evaluate_round(run_dir, 1, held_out=other)


def test_evaluate_a_docker_run_needs_held_out(run_folder: tuple[Path, dict[int, Any]], tmp_path: Path) -> None:
    """A run whose held-out-dir is a container's path: an error naming --held-out; with it, the same numbers."""
    run_dir, results = run_folder
    moved = tmp_path / "run"
    moved.mkdir()
    for path in run_dir.rglob("*"):
        if path.is_file():
            (moved / path.relative_to(run_dir)).parent.mkdir(parents=True, exist_ok=True)
            (moved / path.relative_to(run_dir)).write_bytes(path.read_bytes())
    meta = json.loads((moved / RUN_FILE).read_text())
    write_json_atomic(moved / RUN_FILE, {**meta, "config": {**meta["config"], "held-out-dir": "/held-out"}})
    with pytest.raises(InspectError, match=r"/held-out is not here .*pass --held-out SHARDS_DIR/server, or --data"):
        evaluate_round(moved, 1)
    out = evaluate_round(moved, 1, held_out=Path(meta["config"]["held-out-dir"]))
    assert out.accuracy == results[1].accuracy and out.matches is True


def test_cli_evaluate(run_folder: tuple[Path, dict[int, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, results = run_folder
    assert main(["evaluate", str(run_dir), "--round", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] == results[1].accuracy and out["matches"] is True
    assert main(["evaluate", str(run_dir), "--round", "1"]) == 0
    assert "(the same, bit for bit)" in capsys.readouterr().out
    assert main(["evaluate", str(run_dir), "--round", "7"]) == USAGE_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: round 7 is out of range") and err.count("\n") == 1
    assert main(["evaluate", str(run_dir.parent / "nowhere"), "--round", "0"]) == USAGE_ERROR
    assert "no such folder" in capsys.readouterr().err


def test_a_securely_aggregated_runs_cosine_panel_says_the_clients_are_not_observable(tmp_path: Path) -> None:
    plain = RunReport("plain")
    secure = RunReport("secure", secure_aggregation=SECAGG_PLUS)
    texts = [[t.get_text() for t in ax.texts] for ax in cosines_figure({"plain": plain, "secure": secure}).axes]
    assert texts == [["no client updates"], ["client updates not observable (secure aggregation)"]]
