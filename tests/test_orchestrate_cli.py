"""Bad input to orchestrate.py: a clear error, exit 2, and nothing started or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Orchestrator, orchestrate

pytestmark = pytest.mark.timeout(600)  # includes preparing the shards fixture


def _fails_early(imdb: Path, tmp_path: Path, *args: str, env: dict | None = None) -> Orchestrator:
    """orchestrate.py with fresh --shards-dir and --out under tmp_path; it must exit 2 having written neither."""
    where = ["--data-source", str(imdb), "--shards-dir", str(tmp_path / "shards"), "--out", str(tmp_path / "results")]
    run = orchestrate(*where, *args, timeout=120, env=env)
    assert run.returncode == 2, run.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "shards").exists()
    return run


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
    run = _fails_early(imdb_dir, tmp_path, *args)
    assert message in " ".join(run.stderr.split())


def test_missing_data_folder_is_named(tmp_path: Path) -> None:
    run = orchestrate("--data-source", str(tmp_path / "nope"), "--out", str(tmp_path / "results"), timeout=120)
    assert run.returncode == 2
    assert "data-source: folder" in run.stderr and "does not exist" in run.stderr


def test_unreadable_shard_is_refused(shards: Path, imdb_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    (copy / "client-0" / "manifest.json").write_text("{not json")
    run = orchestrate(
        "--shards-dir", str(copy), "--data-source", str(imdb_dir), "--out", str(tmp_path / "results"), timeout=120
    )
    assert run.returncode == 2, run.stderr
    assert "client-0" in run.stderr and "manifest.json" in run.stderr
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
        (["--backend", "local", "--keep-up"], {}, "--keep-up keeps a Compose stack up; the local backend has none"),
    ],
)
def test_bad_experiment_input_fails_before_anything_starts(
    args: list[str], env: dict, message: str, imdb_dir: Path, tmp_path: Path
) -> None:
    run = _fails_early(imdb_dir, tmp_path, *args, env=env)
    assert message in " ".join(run.stderr.split())
