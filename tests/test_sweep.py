"""A 2 x 2 sweep with 2 repeats on the simulation backend, tiny model: ``orchestrate.py --sweep
strategy=fedavg,fedadam --sweep alpha=iid,1.0 --repeats 2``. Every cell is an experiment of its own with
its summary; sweep.csv must say what the cells' own summaries say, the paired tests must be scipy's on
the cells' repeats. Ctrl-C after the first cell and ``--resume`` must leave that cell untouched and run
the rest; ``--resume`` of a finished sweep must run nothing again. The pure parts:
tests/test_sweep_grid.py."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from scipy import stats

from fedimdb.artifacts import ROUNDS_FILE, read_csv, read_json
from fedimdb.experiment_record import EXPERIMENT_FILE
from fedimdb.summary import SUMMARY_CSV
from fedimdb.sweep.compare import FINAL_ACCURACY, PAIRED_TEST
from fedimdb.sweep.files import SWEEP_CSV, SWEEP_MD, SWEEP_PLOT, SWEEP_TESTS_CSV
from fedimdb.sweep.record import SWEEP_FILE
from tests.conftest import fingerprint, imdb_sample, orchestrate

pytestmark = pytest.mark.slow
CELLS = [
    "strategy-fedavg_alpha-iid",
    "strategy-fedavg_alpha-1.0",
    "strategy-fedadam_alpha-iid",
    "strategy-fedadam_alpha-1.0",
]
REPEATS, ROUNDS = 2, 2


@dataclass
class Interrupted:
    """What the sweep left when Ctrl-C came after its first cell: exit code, sweep.json, the cell's files."""

    returncode: int | None
    stderr: str
    record: dict
    first_cell: dict[str, tuple[str, int]]


@pytest.fixture(scope="module")
def interrupted_sweep(imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Interrupted]:
    """The sweep's folder, after SIGINT once its first cell completed and a --resume that ran it to the end."""
    base = tmp_path_factory.mktemp("sweep")
    source = imdb_sample(imdb_dir, base / "imdb", {"train": 2000, "test": 300})
    args = ["--backend", "simulation", "--model", "tiny", "--clients", "2", "--rounds", str(ROUNDS)]
    args += ["--repeats", str(REPEATS), "--sweep", "strategy=fedavg,fedadam", "--sweep", "alpha=iid,1.0"]
    args += ["--tta-target", "0.5", "--metrics-port", "0", "--retries", "0", "--out", str(base / "results")]
    args += ["--shards-dir", str(base / "shards"), "--data-source", str(source)]
    for setting in ("max-steps=2", "batch-size=16", "max-length=32", "eval-rows=64", "local-eval-rows=16"):
        args += ["--set", setting]
    env = {"FEDIMDB_NUM_PARTITIONS": "2"}
    run = orchestrate(*args, env=env, watch=lambda proc: _interrupt_after_first_cell(base / "results", proc))
    (sweep_dir,) = (base / "results").iterdir()
    first = Interrupted(
        run.returncode, run.stderr, read_json(sweep_dir / SWEEP_FILE), fingerprint(sweep_dir / CELLS[0])
    )
    resumed = orchestrate("--out", str(sweep_dir.parent), "--resume", sweep_dir.name, "--metrics-port", "0", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return sweep_dir, first


@pytest.fixture(scope="module")
def sweep(interrupted_sweep: tuple[Path, Interrupted]) -> Path:
    """The sweep's folder, run to its end."""
    return interrupted_sweep[0]


def _interrupt_after_first_cell(out: Path, proc: subprocess.Popen) -> None:
    """SIGINT to the orchestrator as soon as sweep.json says that the first cell completed."""
    while proc.poll() is None:
        records = list(out.glob(f"*/{SWEEP_FILE}"))
        if records and read_json(records[0])["cells"][0].get("status") == "completed":  # none until it ran
            proc.send_signal(signal.SIGINT)
            return
        time.sleep(0.2)


def _final_accuracies(cell: Path) -> list[float]:
    return [float(read_csv(cell / f"repeat-{k}" / ROUNDS_FILE)[-1]["central_accuracy"]) for k in range(REPEATS)]


def test_an_interrupted_sweep_resumes_where_it_stopped(interrupted_sweep: tuple[Path, Interrupted]) -> None:
    sweep_dir, first = interrupted_sweep
    assert first.returncode == 130, first.stderr[-3000:]
    assert f"--resume {sweep_dir.name}" in " ".join(first.stderr.split())
    assert first.record["status"] == "interrupted"
    assert [c.get("status") for c in first.record["cells"]] == ["completed", "interrupted", None, None]
    assert fingerprint(sweep_dir / CELLS[0]) == first.first_cell, "the completed cell was touched again"
    assert [c["status"] for c in read_json(sweep_dir / SWEEP_FILE)["cells"]] == ["completed"] * len(CELLS)


def test_each_cell_is_an_experiment_of_its_own_settings(sweep: Path) -> None:
    record = read_json(sweep / SWEEP_FILE)
    assert [c["name"] for c in record["cells"]] == CELLS and record["status"] == "completed"
    for cell in CELLS:
        exp = read_json(sweep / cell / EXPERIMENT_FILE)
        assert exp["status"] == "completed" and len(exp["repeats"]) == REPEATS
        assert exp["config"]["strategy"] == cell.split("_")[0].removeprefix("strategy-")
        iid = cell.endswith("iid")
        assert exp["data"]["partitioner"] == ("iid" if iid else "dirichlet")
        assert iid or exp["data"]["alpha"] == 1.0
        assert exp["data"]["shards-dir"].endswith("-iid" if iid else "-alpha-1.0")
        assert exp["seeds"] == read_json(sweep / CELLS[0] / EXPERIMENT_FILE)["seeds"], "repeat k shares its seed"


def test_sweep_csv_says_what_each_cells_summary_says(sweep: Path) -> None:
    rows = {(r["cell"], r["metric"]): r for r in read_csv(sweep / SWEEP_CSV)}
    assert {cell for cell, _ in rows} == set(CELLS)
    for cell in CELLS:
        summary = read_csv(sweep / cell / SUMMARY_CSV)
        (last,) = (r for r in summary if r["metric"] == "central_accuracy" and r["round"] == str(ROUNDS))
        ours = rows[(cell, FINAL_ACCURACY)]
        assert ours["strategy"] and ours["alpha"] in ("iid", "1.0")
        for column in ("n", "mean", "std", "ci95_low", "ci95_high"):
            assert float(ours[column]) == pytest.approx(float(last[column])), (cell, column)
        assert float(rows[(cell, "bytes")]["mean"]) > 0


def test_the_paired_tests_are_scipys_on_the_cells_repeats(sweep: Path) -> None:
    tests = read_csv(sweep / SWEEP_TESTS_CSV)
    assert len(tests) == 3 * len(CELLS) * (len(CELLS) - 1) // 2
    for t in (t for t in tests if t["metric"] == FINAL_ACCURACY):
        a, b = _final_accuracies(sweep / t["first"]), _final_accuracies(sweep / t["second"])
        p = float(t["p_value"])
        if len({y - x for x, y in zip(a, b, strict=True)}) == 1:
            assert math.isnan(p), t  # nothing to test
        else:
            assert p == pytest.approx(stats.ttest_rel(b, a).pvalue), t
    assert PAIRED_TEST in (sweep / SWEEP_MD).read_text()
    assert (sweep / SWEEP_PLOT).read_bytes().startswith(b"\x89PNG")


def test_resuming_a_finished_sweep_runs_nothing_again(sweep: Path) -> None:
    attempts = {c: read_json(sweep / c / EXPERIMENT_FILE)["repeats"] for c in CELLS}
    before = (sweep / SWEEP_CSV).read_bytes()
    run = orchestrate("--out", str(sweep.parent), "--resume", sweep.name, "--metrics-port", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    assert {c: read_json(sweep / c / EXPERIMENT_FILE)["repeats"] for c in CELLS} == attempts
    assert (sweep / SWEEP_CSV).read_bytes() == before
