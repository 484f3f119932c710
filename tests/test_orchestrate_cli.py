"""Bad input to orchestrate.py: a clear error, exit 2, and nothing started or written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rounds", "0"], "num-rounds: 0 is out of range"),
        (["--clients", "11"], "num-clients: 11 clients but only 10 shards"),
        (["--model", "bert-base"], "model: unknown model 'bert-base'"),
        (["--alpha", "0", "--partitioner", "dirichlet"], "alpha: 0.0 is out of range"),
        (["--set", "max-steps=-1"], "max-steps: -1 is out of range"),
    ],
)
def test_bad_input_fails_before_anything_starts(args: list[str], message: str, imdb_dir: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "orchestrate.py",
        "--env-file",
        "/dev/null",
        "--data-source",
        str(imdb_dir),
        "--shards-dir",
        str(tmp_path / "shards"),
        "--out",
        str(tmp_path / "results"),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert not (tmp_path / "results").exists() and not (tmp_path / "shards").exists()


def test_missing_data_folder_is_named(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "orchestrate.py",
        "--env-file",
        "/dev/null",
        "--data-source",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "results"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "data-source: folder" in proc.stderr and "does not exist" in proc.stderr


def test_unreadable_shard_is_refused(shards: Path, imdb_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    (copy / "client-0" / "manifest.json").write_text("{not json")
    cmd = [
        sys.executable,
        "orchestrate.py",
        "--env-file",
        "/dev/null",
        "--shards-dir",
        str(copy),
        "--data-source",
        str(imdb_dir),
        "--out",
        str(tmp_path / "results"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "client-0" in proc.stderr and "manifest.json" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--backend", "docker"],
            {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
            "--backend docker: no Docker daemon answers",
        ),
        (
            ["--backend", "docker", "--compose-file", "/nonexistent/docker-compose.yml"],
            {},
            "--backend docker: compose file /nonexistent/docker-compose.yml not found",
        ),
        (["--repeats", "0"], {}, "repeats: 0 is out of range; set it >= 1"),
        (["--resume", "no-such-experiment"], {}, "--resume: no experiment 'no-such-experiment'"),
    ],
)
def test_bad_experiment_input_fails_before_anything_starts(
    args: list[str], env: dict, message: str, imdb_dir: Path, tmp_path: Path
) -> None:
    import os

    cmd = [
        sys.executable,
        "orchestrate.py",
        "--env-file",
        "/dev/null",
        "--data-source",
        str(imdb_dir),
        "--shards-dir",
        str(tmp_path / "shards"),
        "--out",
        str(tmp_path / "results"),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert not (tmp_path / "results").exists() and not (tmp_path / "shards").exists()
