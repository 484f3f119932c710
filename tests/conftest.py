"""Shared fixtures: real IMDB shards from ../shared, small local Parquet datasets, and one
real local Flower deployment run twice with the same seed (reused by several tests)."""

from __future__ import annotations

import os

# No hub here: anything that tries to download fails fast instead of hanging. Set before anything
# imports huggingface_hub (it reads them once, at import), so fixtures of every scope and every
# subprocess see them too.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedimdb.config import DataConfig
from fedimdb.data import prepare_shards

ROOT = Path(__file__).resolve().parents[1]
IMDB = Path(os.environ.get("FEDIMDB_TEST_IMDB", ROOT.parent / "shared" / "data" / "imdb"))
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

# Settings of the end-to-end runs: tiny model, a few steps, small evaluations.
E2E_CLIENTS = 3
E2E_ROUNDS = 2
E2E_SETTINGS = ["max-steps=2", "batch-size=8", "eval-rows=64", "local-eval-rows=32", "archive-client-weights=true"]


def require_docker() -> None:
    """Skip the calling test module without Docker + Compose v2; fail instead if FEDIMDB_REQUIRE_DOCKER=1 (CI)."""
    try:
        subprocess.run(["docker", "info"], capture_output=True, check=True, timeout=30)
        subprocess.run(["docker", "compose", "version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        if os.environ.get("FEDIMDB_REQUIRE_DOCKER") == "1":
            raise RuntimeError(
                "FEDIMDB_REQUIRE_DOCKER=1 but no Docker daemon with Compose v2 answers; "
                "run .ci/docker/install-docker.sh"
            ) from None
        pytest.skip("no Docker daemon with Compose v2", allow_module_level=True)


@pytest.fixture(scope="session")
def session_environ() -> dict[str, str | None]:
    """The offline switches as a session-scoped fixture saw them when it ran."""
    return {name: os.environ.get(name) for name in OFFLINE_VARS}


@pytest.fixture(scope="session")
def imdb_dir() -> Path:
    if not (IMDB / "train.parquet").is_file():
        pytest.fail(f"IMDB Parquet files not found in {IMDB}; set FEDIMDB_TEST_IMDB to the folder holding them")
    return IMDB


@pytest.fixture(scope="session")
def shards(imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 50,000 reviews, ten IID shards."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    return prepare_shards(DataConfig(data_source=str(imdb_dir), shards_dir=str(out)), log=lambda *_: None)


def write_parquet_dataset(folder: Path, rows: int) -> Path:
    """A small labelled dataset shaped like IMDB, as a local folder of Parquet files."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        labels = [i % 2 for i in range(rows)]
        texts = [
            ("a great movie, loved it " if y else "a boring film, awful acting ") + f"#{i} {split}"
            for i, y in enumerate(labels)
        ]
        pq.write_table(pa.table({"text": texts, "label": labels}), folder / f"{split}.parquet")
    return folder


def run_orchestrate(out: Path, data_dir: Path, imdb: Path, *extra: str, watch=None) -> subprocess.CompletedProcess:
    """``python orchestrate.py --backend local`` as a user runs it; ``watch(proc)`` runs alongside."""
    args = [
        sys.executable,
        "orchestrate.py",
        "--backend",
        "local",
        "--model",
        "tiny",
        "--clients",
        str(E2E_CLIENTS),
        "--rounds",
        str(E2E_ROUNDS),
        "--seed",
        "7",
        "--out",
        str(out),
        "--shards-dir",
        str(data_dir),
        "--data-source",
        str(imdb),
        "--env-file",
        "/dev/null",
    ]
    for setting in E2E_SETTINGS:
        args += ["--set", setting]
    proc = subprocess.Popen([*args, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = threading.Thread(target=watch, args=(proc,), daemon=True) if watch else None
    if watcher:
        watcher.start()
    output, _ = proc.communicate(timeout=900)
    if watcher:
        watcher.join(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, output, "")


class ConnectionWatch:
    """Samples, while a run is going on, which TCP peers the SuperNodes are connected to."""

    def __init__(self) -> None:
        self.samples: list[dict] = []

    def __call__(self, proc: subprocess.Popen) -> None:
        import psutil

        while proc.poll() is None:
            try:
                tree = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return
            link = [p for p in tree if _is(p, "flower-superlink")]
            nodes = [p for p in tree if _is(p, "flower-supernode")]
            if link and len(nodes) == E2E_CLIENTS:
                try:
                    sample = {
                        "superlink_cmd": link[0].cmdline(),
                        "superlink_listening": [
                            c.laddr.port for c in link[0].net_connections("tcp") if c.status == psutil.CONN_LISTEN
                        ],
                        "nodes": [
                            {
                                "cmd": n.cmdline(),
                                "peers": [
                                    c.raddr.port
                                    for c in n.net_connections("tcp")
                                    if c.status == psutil.CONN_ESTABLISHED and c.raddr
                                ],
                            }
                            for n in nodes
                        ],
                    }
                except psutil.Error:
                    continue
                self.samples.append(sample)
            time.sleep(1)


def _is(process, name: str) -> bool:
    import psutil

    try:
        return any(Path(part).name == name for part in process.cmdline()[:2])
    except psutil.Error:
        return False


@pytest.fixture(scope="session")
def e2e_runs(imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two real local deployments with the same seed; the first one is watched for connections."""
    base = tmp_path_factory.mktemp("e2e")
    watch = ConnectionWatch()
    first = run_orchestrate(base / "results", base / "shards", imdb_dir, watch=watch)
    second = run_orchestrate(base / "results", base / "shards", imdb_dir)
    return {"runs": [first, second], "results": base / "results", "watch": watch}
