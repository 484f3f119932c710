"""A warm model per node: a worker process beside the SuperNode keeps the model loaded across messages.

Flower 1.39 runs every message in a ClientApp process of its own (a non-ephemeral ClientApp is
its open issue #3670), so each message loads the model, its tokenizer and the node's shard again;
on a GPU it also sets up CUDA again. With ``warm-model`` the ClientApp process hands the message
to its node's worker instead (:func:`call`), which keeps all three loaded and does the work of
:mod:`client.task` with them:

* one worker per run and node, started by the first message's ClientApp, listening on a Unix
  socket in ``$TMPDIR/fedimdb-warm-model/RUN-NODE/`` (with its ``worker.log``); it serves one
  message at a time, with the FAB's code of the ClientApp that started it;
* what it answers is what the ClientApp process would have answered, byte for byte
  (tests/test_warm_model.py); an error in the work is raised in the ClientApp, so Flower sends
  its error reply as for any ClientApp error;
* a worker that dies while it serves a message costs that message an error reply
  (:class:`WorkerLost`); the next message starts a new worker. A worker says when it has taken a
  message; one that never took it (a dying worker's socket can still accept for a moment) is asked
  of the next worker instead;
* it ends when the process that forks the node's ClientApps (the node's fork server, or Flower's
  SuperExec) is gone, or after :data:`IDLE_SECONDS` without a message. It runs in the
  ClientApp's process group, so what stops the node's group stops it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, cast

from flwr.app import Context, RecordDict

from client.task import WORK, Loads
from fedimdb.config import RunConfig
from fedimdb.data import Examples
from fedimdb.protocol import NODE_PARTITION_ID, server_round_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fedimdb.finetune import Tuned

HOME_DIR = "fedimdb-warm-model"  # under the temporary folder: one sub-folder RUN-NODE per worker
SOCKET, LOCK, PID, LOG = "socket", "lock", "pid", "worker.log"
IDLE_SECONDS = 900.0  # a worker with no message for this long ends (a node may outlive its run)
START_TIMEOUT = 300.0  # seconds a new worker may take to import torch and listen
POLL_SECONDS = 1.0  # how often an idle worker checks that its node is still there
OK, ERROR = "ok", "error"
TAKEN = "taken"  # the worker's first frame: it read the message, which is lost with it from here on
RETAKE_SECONDS = 10.0  # how long a message that no worker took is offered again (to the next worker)
HEADER = struct.Struct("!Q")  # every frame: its length, then a pickle
APP_ROOT = Path(__file__).resolve().parent.parent  # the folder holding client/ and fedimdb/: the FAB's
BOOT = f"import sys; sys.path.insert(0, sys.argv[1]); from {__name__} import main; main(sys.argv[2:])"
"""``python -c BOOT APP_ROOT HOME WATCH``: the worker, with the FAB's code first on its path."""


class WorkerLost(RuntimeError):
    """The node's warm worker ended while it served this message, or could not start."""


class Kept(Loads):
    """The model and the shard splits, loaded once and kept (a worker's way): the latest model only."""

    def __init__(self) -> None:
        self._model: tuple[tuple[object, ...], tuple[Tuned, PreTrainedTokenizerBase]] | None = None
        self._splits: dict[tuple[Path, str], Examples] = {}

    def model(self, cfg: RunConfig) -> tuple[Tuned, PreTrainedTokenizerBase]:
        """The run's model as last loaded; every tensor that trains is overwritten by the next message."""
        key = (cfg.model, cfg.seed, cfg.fine_tune, cfg.lora_rank)
        if self._model is None or self._model[0] != key:
            self._model = None  # let the old one go first
            self._model = (key, super().model(cfg))
        return self._model[1]

    def split(self, shard: Path, split: str) -> Examples:
        """One split of the shard, read and checked once."""
        if (shard, split) not in self._splits:
            self._splits[(shard, split)] = super().split(shard, split)
        return self._splits[(shard, split)]


def home_of(context: Context) -> Path:
    """The worker folder of this run on this node."""
    return Path(tempfile.gettempdir()) / HOME_DIR / f"{context.run_id}-{context.node_id}"


def _send(conn: socket.socket, value: object) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    conn.sendall(HEADER.pack(len(data)))
    conn.sendall(data)


def _receive(conn: socket.socket) -> object | None:
    """The next frame's value; None when the other end closed before a whole frame came."""
    header = _read_exactly(conn, HEADER.size)
    if header is None:
        return None
    data = _read_exactly(conn, HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 22))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- the ClientApp's side


def call(kind: str, content: RecordDict, context: Context) -> RecordDict:
    """The reply content of a message of ``kind``, from this node's worker (started if none answers).

    Raises
    ------
    WorkerLost
        The worker ended before it replied (the message fails; the next one starts a new worker).
    Exception
        What the work raised in the worker, raised again here.
    """
    home = home_of(context)
    deadline = time.monotonic() + RETAKE_SECONDS
    taken, reply = _exchange(home, (kind, content, context))
    while not taken and time.monotonic() < deadline:  # a dying worker's socket accepted it: the next worker
        time.sleep(0.05)
        taken, reply = _exchange(home, (kind, content, context))
    if not isinstance(reply, tuple):
        raise WorkerLost(
            f"the warm model worker of this node ended while it served this {kind} message; the next message "
            f"starts a new one (its log: {home / LOG})"
        )
    status, value = reply
    if status == ERROR:
        raise cast("Exception", value)
    return cast("RecordDict", value)


def _exchange(home: Path, request: tuple[str, RecordDict, Context]) -> tuple[bool, object | None]:
    """Send ``request`` to the worker of ``home``: whether the worker took it, and its reply (None: none came)."""
    taken = False
    try:
        with _connect(home) as conn:
            _send(conn, request)
            taken = _receive(conn) == TAKEN
            return taken, _receive(conn) if taken else None
    except ConnectionError:  # reset, or a broken pipe: it died before it took the request, or before it replied
        return taken, None


def _try_connect(home: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(home / SOCKET))
    except OSError:  # none yet, or a dead worker's socket file
        conn.close()
        return None
    return conn


def _connect(home: Path) -> socket.socket:
    """A connection to the worker of ``home``, which the first caller starts (the others wait on its lock)."""
    conn = _try_connect(home)
    if conn is not None:
        return conn
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _try_connect(home) or _start(home)


def _start(home: Path) -> socket.socket:
    """Start a worker for ``home`` and connect to it once it listens."""
    with open(home / LOG, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(APP_ROOT), str(home), str(os.getppid())],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise WorkerLost(f"the warm model worker exited ({proc.returncode}) before it listened; see {home / LOG}")
        conn = _try_connect(home)
        if conn is not None:
            return conn
        time.sleep(0.05)
    proc.kill()
    raise WorkerLost(f"the warm model worker did not listen within {START_TIMEOUT:.0f} s; see {home / LOG}")


# ---------------------------------------------------------------- the worker


def _node_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _serve_one(conn: socket.socket, loads: Kept) -> None:
    """Do one message's work and send its reply, or the error it raised."""
    request = _receive(conn)
    if not isinstance(request, tuple):
        return
    kind, content, context = request
    _send(conn, TAKEN)
    label = f"{kind} round {server_round_of(content)} of partition {context.node_config.get(NODE_PARTITION_ID)}"
    print(f"{label}: started", flush=True)
    start = time.perf_counter()
    try:
        reply: tuple[str, object] = (OK, WORK[kind](content, context, loads))
    except Exception as exc:
        traceback.print_exc()
        reply = (ERROR, exc)
    try:
        _send(conn, reply)
    except (pickle.PicklingError, TypeError, AttributeError):  # an exception that does not pickle
        _send(conn, (ERROR, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))
    print(f"{label}: replied in {time.perf_counter() - start:.2f} s", flush=True)


def serve(home: Path, watch: int, idle: float = IDLE_SECONDS) -> None:
    """Listen on ``home``'s socket and serve messages until ``watch`` is gone or ``idle`` seconds pass."""
    with contextlib.suppress(FileNotFoundError):
        (home / SOCKET).unlink()  # a dead worker's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(home / SOCKET))
    listener.listen(16)
    (home / PID).write_text(f"{os.getpid()}\n")
    print(f"warm model worker {os.getpid()}: serving {home.name} for process {watch}", flush=True)
    loads, last = Kept(), time.monotonic()
    while not _node_is_gone(watch) and time.monotonic() - last < idle:
        if select.select([listener], [], [], POLL_SECONDS)[0]:
            conn, _ = listener.accept()
            with conn:
                _serve_one(conn, loads)
            last = time.monotonic()
    (home / SOCKET).unlink()
    print(f"warm model worker {os.getpid()}: ended", flush=True)


def main(args: list[str]) -> None:
    """``python -c BOOT APP_ROOT HOME WATCH`` (see :func:`_start`)."""
    home, watch = args
    serve(Path(home), int(watch))
