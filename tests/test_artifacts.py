"""A run folder's verification catches a changed weight file, a deleted file and an edited run.json; a run
killed between any two file operations leaves a folder that verifies."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
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
    continuable_round,
    round_weights_name,
    server_state_name,
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


class Killed(BaseException):
    """The process dies here (BaseException: no ``except Exception`` carries on after it)."""


def _three_rounds(folder: Path) -> None:
    """What the ServerApp does to its folder (server/server_app.py): each round's model and state written,
    the tables rewritten, run.json saved, the superseded state removed; then the final model."""
    record = RunRecord(run_id=1, seed=7, config={}, data={}, versions={}, started=utc_now())
    run = RunArtifacts(folder, record)
    for r in (1, 2, 3):
        run.write_weights(round_weights_name(r), {"w": torch.full((4,), float(r))})
        run.write_weights(server_state_name(r), {"m": torch.full((4,), float(r))})
        run.write_csv(ROUNDS_FILE, ["round"], [{"round": k} for k in range(1, r + 1)])
        run.write_csv(CLIENTS_FILE, ["round"], [{"round": k} for k in range(1, r + 1)])
        run.record.rounds_completed = r
        run.save()
        run.remove(server_state_name(r - 1))
    run.write_weights(WEIGHTS, {"w": torch.zeros(4)})
    run.finish(RunStatus.COMPLETED)


def _dying_at(operation: int | None) -> tuple[Callable[..., None], Callable[..., None], list[str]]:
    """os.replace and os.unlink that count the run folder's file operations (not its temporary files)
    and raise Killed before the ``operation``-th; the names operated on."""
    real_replace, real_unlink, done = os.replace, os.unlink, []

    def step(path: object) -> None:
        name = Path(str(path)).name
        if name.startswith("."):
            return
        if len(done) == operation:
            raise Killed
        done.append(name)

    def replace(src: object, dst: object) -> None:
        step(dst)
        real_replace(src, dst)

    def unlink(path: object, **kwargs: object) -> None:
        step(path)
        real_unlink(path, **kwargs)

    return replace, unlink, done


def _three_rounds_dying_at(folder: Path, operation: int | None, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """:func:`_three_rounds` with the process killed before file operation ``operation`` (None: never);
    the names of the operations done."""
    replace, unlink, done = _dying_at(operation)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        m.setattr(os, "unlink", unlink)
        _three_rounds(folder)
    return done


def test_a_run_killed_between_any_two_file_operations_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed anywhere, the folder verifies, and run.json's last round can be continued (its state file
    and model are there): nothing archived is lost to a kill."""
    done = _three_rounds_dying_at(tmp_path / "whole", None, monkeypatch)
    assert {RUN_FILE, RUN_HASH_FILE, ROUNDS_FILE, "round-000.safetensors"} <= set(done), done
    for operation in range(len(done)):
        folder = tmp_path / f"killed-{operation}"
        with pytest.raises(Killed):
            _three_rounds_dying_at(folder, operation, monkeypatch)
        if not (folder / RUN_HASH_FILE).exists():
            continue  # killed before its first run.json was complete: no run yet
        try:
            record = verify_run(folder, require_completed=False)
        except ArtifactError as exc:
            raise AssertionError(f"killed before operation {operation} ({done[operation]}): {exc}") from None
        assert continuable_round(record) == record.rounds_completed, (operation, done[operation])
