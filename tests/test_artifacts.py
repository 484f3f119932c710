"""A run folder's verification catches a changed weight file, a deleted file and an edited run.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fedimdb.artifacts import (
    CLIENTS_FILE,
    FINAL_WEIGHTS,
    ROUNDS_FILE,
    RUN_FILE,
    RUN_HASH_FILE,
    WEIGHTS_DIR,
    ArtifactError,
    RunArtifacts,
    utc_now,
    verify_run,
    write_json_atomic,
)
from fedimdb.run_record import RunRecord, RunStatus

pytestmark = pytest.mark.timeout(60)
WEIGHTS = f"{WEIGHTS_DIR}/{FINAL_WEIGHTS}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small completed run: weights, both CSVs, run.json and its sidecar."""
    record = RunRecord(run_id=1, seed=7, config={"model": "tiny"}, data={}, versions={}, started=utc_now())
    run = RunArtifacts(tmp_path_factory.mktemp("artifacts") / "run", record)
    run.write_weights(WEIGHTS, {"layer.weight": torch.arange(64, dtype=torch.float32).reshape(8, 8)})
    run.write_csv(ROUNDS_FILE, ["round", "central_accuracy"], [{"round": 1, "central_accuracy": 0.5}])
    run.write_csv(CLIENTS_FILE, ["round", "partition_id"], [{"round": 1, "partition_id": 0}])
    run.finish(RunStatus.COMPLETED)
    return run.folder


@pytest.fixture
def copy(run_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of the run to damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def test_untouched_run_verifies(run_dir: Path) -> None:
    meta = verify_run(run_dir)
    assert meta.status == "completed" and meta.seed == 7
    assert set(meta.files) == {WEIGHTS, ROUNDS_FILE, CLIENTS_FILE}
    assert (run_dir / RUN_HASH_FILE).read_text().endswith(f"  {RUN_FILE}\n")  # sha256sum -c format


def test_changed_weight_file_fails(copy: Path) -> None:
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (copy / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{WEIGHTS}: sha256 mismatch"):
        verify_run(copy)


def test_deleted_file_fails(copy: Path) -> None:
    (copy / CLIENTS_FILE).unlink()
    with pytest.raises(ArtifactError, match=rf"{CLIENTS_FILE}: missing"):
        verify_run(copy)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("rounds-completed", "3", "rounds-completed is a JSON string, not an integer"),
        ("status", "done", "status is 'done', not one of running, completed, failed"),
        ("seed", None, "seed is missing"),
    ],
)
def test_a_run_json_that_is_no_run_record_is_named(copy: Path, key: str, value: object, problem: str) -> None:
    """Hashes that match, contents that do not fit the model (fedimdb/run_record.py): the field is named."""
    meta = json.loads((copy / RUN_FILE).read_text())
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    digest = write_json_atomic(copy / RUN_FILE, meta)
    (copy / RUN_HASH_FILE).write_text(f"{digest}  {RUN_FILE}\n")
    with pytest.raises(ArtifactError, match=f"{RUN_FILE} is not a run record: {problem}"):
        verify_run(copy)


def test_edited_run_json_fails(copy: Path) -> None:
    meta = json.loads((copy / RUN_FILE).read_text())
    meta["seed"] = 8
    (copy / RUN_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    with pytest.raises(ArtifactError, match=rf"{RUN_FILE}: sha256 mismatch"):
        verify_run(copy)


def test_missing_sidecar_fails(copy: Path) -> None:
    (copy / RUN_HASH_FILE).unlink()
    with pytest.raises(ArtifactError, match=rf"{RUN_HASH_FILE}: missing"):
        verify_run(copy)
