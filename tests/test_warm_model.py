"""A warm model per node (client/worker.py): a real worker process answers what the ClientApp process
would, byte for byte, message after message; a worker killed while it serves a message costs that
message an error, and the next message starts a new one. Then a real local run with ``warm-model``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from client import task, worker
from fedimdb.artifacts import read_csv, read_json, verify_run
from fedimdb.config import DataConfig, RunConfig
from fedimdb.data import prepare_shards
from fedimdb.model import load_model
from fedimdb.protocol import (
    ARRAYS,
    CONFIG,
    EVALUATE_RECEIVED,
    NODE_PARTITION_ID,
    NODE_SHARD_DIR,
    SERVER_ROUND,
    arrays_of,
    transport_arrays,
)
from server.records import ClientStatus
from tests.conftest import RUN_MARK, local_run_args, marked_processes, orchestrate, write_parquet_dataset

RUN = RunConfig(model="tiny", max_steps=4, batch_size=8, max_length=32, local_eval_rows=16, torch_threads=1)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Client 0's shard of a small IMDB-shaped dataset."""
    root = tmp_path_factory.mktemp("warm")
    data = write_parquet_dataset(root / "imdb", 400)
    out = prepare_shards(DataConfig(data_source=str(data), shards_dir=str(root / "shards"), num_partitions=2))
    return out / "client-0"


@pytest.fixture
def tmpdir_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Worker folders under a temporary folder of this test's own (short: a socket's path has ~100 characters)."""
    folder = Path(tempfile.mkdtemp(prefix="fedimdb-test-"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile keeps the folder it found first
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _context(shard: Path, run: RunConfig = RUN, run_id: int = 11) -> Context:
    node_config = {NODE_PARTITION_ID: 0, NODE_SHARD_DIR: str(shard)}
    return Context(run_id=run_id, node_id=3, node_config=node_config, state=RecordDict(), run_config=run.as_dict())


def _content(server_round: int, seed: int = 0) -> RecordDict:
    model, _ = load_model("tiny", seed)
    config = ConfigRecord({SERVER_ROUND: server_round, EVALUATE_RECEIVED: True})
    return RecordDict({ARRAYS: transport_arrays(dict(model.state_dict()), "float32"), CONFIG: config})


def _state(reply: RecordDict) -> dict[str, torch.Tensor]:
    return arrays_of(reply).to_torch_state_dict()


def _worker_pid(context: Context) -> int:
    return int((worker.home_of(context) / worker.PID).read_text())


@pytest.fixture
def stop_workers() -> Iterator[None]:
    """Kill every worker a test started (they would end by themselves once the test process is gone)."""
    yield
    killed = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if worker.BOOT in proc.cmdline():
                proc.kill()
                killed.append(proc)
    psutil.wait_procs(killed, timeout=10)  # only those: another child (a resource tracker) runs on


@pytest.mark.usefixtures("tmpdir_env", "stop_workers")
def test_the_worker_answers_what_the_clientapp_process_would(shard: Path) -> None:
    """Three messages (train, train with other weights, evaluate) to one worker, each against a fresh load."""
    context = _context(shard)
    messages = [(task.TRAIN, _content(1)), (task.TRAIN, _content(2, seed=5)), (task.EVALUATE, _content(3, seed=6))]
    for kind, content in messages:
        warm = worker.call(kind, content, context)
        fresh = task.WORK[kind](content, context, task.Loads())
        if kind == task.TRAIN:
            assert _state(warm).keys() == _state(fresh).keys()
            for name, tensor in _state(fresh).items():
                assert torch.equal(tensor, _state(warm)[name]), name
        timings = {"train-seconds", "setup-seconds", "train-samples-per-s"}
        warm_metrics = {k: v for k, v in warm["metrics"].items() if k not in timings}
        assert warm_metrics == {k: v for k, v in fresh["metrics"].items() if k not in timings}
    log = (worker.home_of(context) / worker.LOG).read_text()
    assert log.count("serving") == 1, log  # one worker served all three
    assert "train round 2 of partition 0: replied" in log and "evaluate round 3 of partition 0: replied" in log


@pytest.mark.usefixtures("tmpdir_env", "stop_workers")
def test_an_error_in_the_work_is_raised_in_the_clientapp_and_the_worker_stays(shard: Path) -> None:
    context = _context(shard)
    config = ConfigRecord({SERVER_ROUND: 1})
    broken = RecordDict({ARRAYS: transport_arrays({"w": torch.ones(2)}, "float32"), CONFIG: config})
    with pytest.raises(ValueError, match="tensors missing"):
        worker.call(task.TRAIN, broken, context)
    pid = _worker_pid(context)
    worker.call(task.TRAIN, _content(1), context)
    assert _worker_pid(context) == pid


@pytest.mark.usefixtures("tmpdir_env", "stop_workers")
def test_a_killed_worker_costs_its_message_an_error_and_the_next_message_succeeds(shard: Path) -> None:
    """The worker is SIGKILLed while it trains (a long budget keeps it busy); that call fails naming
    the worker and its log; the next call starts a new worker and answers as a fresh process would."""
    context = _context(shard, dataclasses.replace(RUN, max_steps=0, local_epochs=200))
    worker.call(task.EVALUATE, _content(1), context)  # the worker is up
    first, log = _worker_pid(context), worker.home_of(context) / worker.LOG
    killer = threading.Thread(target=_kill_when, args=(log, "train round 2 of partition 0: started", first))
    killer.start()
    with pytest.raises(worker.WorkerLost, match=f"ended while it served this train message.*{worker.LOG}"):
        worker.call(task.TRAIN, _content(2), context)
    killer.join()
    context = _context(shard)
    reply = worker.call(task.TRAIN, _content(3), context)
    assert _worker_pid(context) != first
    fresh = task.train(_content(3), context, task.Loads())
    for name, tensor in _state(fresh).items():
        assert torch.equal(tensor, _state(reply)[name]), name


@pytest.mark.usefixtures("tmpdir_env", "stop_workers")
def test_a_message_no_worker_took_goes_to_the_next_worker(shard: Path) -> None:
    """A dying worker's socket can accept a connection it never reads (seen in CI: the ClientApp saw the
    killed worker's connection close, and its next message reached the listener before the kernel closed
    it). Here a listener that never reads, closed 0.5 s later, stands for it: the message is not lost but
    answered by a new worker, as a fresh process would answer it."""
    context = _context(shard)
    home = worker.home_of(context)
    home.mkdir(parents=True)
    dying = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dying.bind(str(home / worker.SOCKET))
    dying.listen(1)
    threading.Timer(0.5, dying.close).start()
    reply = worker.call(task.TRAIN, _content(1), context)
    fresh = task.train(_content(1), context, task.Loads())
    for name, tensor in _state(fresh).items():
        assert torch.equal(tensor, _state(reply)[name]), name
    assert (home / worker.LOG).read_text().count("serving") == 1


def _kill_when(log: Path, line: str, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_local_run_with_warm_models_survives_a_killed_worker(shards: Path, imdb_dir: Path, tmp_path: Path) -> None:
    """3 rounds, 2 clients, warm-model on: partition 0's worker is SIGKILLed as round 2's training starts.
    That train message fails (clients.csv names the worker), the round goes on with partition 1, round 3
    has both, and no worker outlives the orchestrator."""
    settings = ["warm-model=true", "max-steps=0", "local-epochs=1", "max-length=64", "eval-rows=64"]
    settings += ["local-eval-rows=32", "min-reply-fraction=0.5", "round-retries=0"]
    killed: list[bool] = []
    run = orchestrate(
        *local_run_args(tmp_path / "results", shards, imdb_dir, clients=2, rounds=3, settings=settings),
        watch=lambda proc: killed.append(_kill_a_worker_in_round_2(proc)),
    )
    (exp,) = (tmp_path / "results").iterdir()
    assert run.returncode == 0, read_json(exp / "experiment.json")
    assert killed == [True], "no worker of partition 0 was seen training round 2"
    run_dir = exp / "repeat-0"
    verify_run(run_dir)
    rows = {(r["round"], r["partition_id"]): r for r in read_csv(run_dir / "clients.csv")}
    assert rows[("2", "0")]["status"] == ClientStatus.FAILED and "warm model worker" in rows[("2", "0")]["reason"]
    assert rows[("2", "1")]["status"] == rows[("3", "0")]["status"] == rows[("3", "1")]["status"] == ClientStatus.OK
    assert not run.leftovers()


def _kill_a_worker_in_round_2(orchestrator: subprocess.Popen, timeout: float = 300) -> bool:
    """SIGKILL partition 0's worker once its log says round 2's training started."""
    mark = psutil.Process(orchestrator.pid).environ()[RUN_MARK]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and orchestrator.poll() is None:
        for proc in marked_processes(mark):
            with contextlib.suppress(psutil.Error, OSError):
                if worker.BOOT in proc.cmdline():
                    log = Path(proc.cmdline()[-2]) / worker.LOG
                    if "train round 2 of partition 0: started" in log.read_text():
                        proc.kill()
                        return True
        time.sleep(0.02)
    return False
