"""Warm client nodes: a fork server beside the SuperNode, with the heavy libraries already imported.

Flower 1.39 starts a fresh ``flwr-clientapp`` process for every message, which imports flwr,
torch and transformers again (1.4-2.5 CPU-s each time). ``python -m fedimdb.deploy.forkserver
-- flower-supernode ...`` imports them once, starts the SuperNode as its child with
:mod:`fedimdb.deploy.clientapp_shim` first on its PATH as ``flwr-clientapp``, and for every task
the shim hands over, forks a process that runs Flower's own ``flwr-clientapp`` entry point with
the task's arguments and standard streams. Flower's contract holds: every message still gets a
process of its own, which pulls the task, installs the FAB and imports the app's code from it,
and reports errors and crashes as Flower does; only the library imports are shared.

What this depends on in Flower (tests/test_forkserver.py fails when an upgrade breaks it): the
SuperExec launches ClientApps by the name ``flwr-clientapp`` looked up on PATH, and
``flwr.supernode.cli.flwr_clientapp.flwr_clientapp`` is that command's entry point.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from fedimdb.deploy.clientapp_shim import COMMAND, SOCKET_VAR

PRELOAD = (
    "torch",
    "safetensors.torch",
    "pyarrow.parquet",
    "numpy",
    "flwr.supernode.cli.flwr_clientapp",
    "transformers",
    # transformers imports its classes lazily, on first use: these are what the presets (BERT) use.
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.bert.configuration_bert",
    "transformers.models.bert.modeling_bert",
    "transformers.models.bert.tokenization_bert",
    "transformers.tokenization_utils_fast",
)
"""Imported once by the fork server; the app's own modules still come from each run's FAB."""
TRANSFORMERS_NAMES = ("AutoConfig", "AutoModelForSequenceClassification", "AutoTokenizer", "PreTrainedTokenizerFast")
REQUEST_LIMIT = 1 << 16
APP_PACKAGE = __name__.split(".")[0]  # fedimdb: this server runs from it, but a task must import the FAB's


def preload() -> None:
    """Import what every ClientApp process needs; run no torch code (forked OpenMP pools hang)."""
    import importlib

    for module in PRELOAD:
        with contextlib.suppress(ImportError):  # best effort: a transformers without one just loads it later
            importlib.import_module(module)
    transformers = sys.modules.get("transformers")
    for name in TRANSFORMERS_NAMES:
        getattr(transformers, name, None)


def shim_dir(workdir: Path) -> Path:
    """A folder holding the shim as ``flwr-clientapp``, run by this Python with ``-IS``."""
    folder = workdir / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / COMMAND
    source = Path(__file__).with_name("clientapp_shim.py").read_text()
    shim.write_text(f"#!{sys.executable} -IS\n{source}")
    shim.chmod(0o755)
    return folder


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """A shim's request (argv, cwd) and its three standard streams."""
    data, fds, _flags, _addr = socket.recv_fds(conn, REQUEST_LIMIT, 3)
    while not data.endswith(b"\n"):
        chunk = conn.recv(REQUEST_LIMIT)
        if not chunk:
            raise ConnectionError("the shim hung up before its request was complete")
        data += chunk
    if len(fds) != 3:
        raise ConnectionError(f"the shim sent {len(fds)} file descriptors, not 3")
    return json.loads(data), fds


def forget_app_modules() -> None:
    """Drop fedimdb's own modules (this server imported them) so that the FAB's copy is imported."""
    for name in [m for m in sys.modules if m == APP_PACKAGE or m.startswith(f"{APP_PACKAGE}.")]:
        del sys.modules[name]


def _run_task(request: dict, fds: list[int]) -> None:
    """In the forked child: become ``flwr-clientapp ARGS``; never returns."""
    code = 1
    try:
        forget_app_modules()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        sys.argv = [COMMAND, *request["argv"]]
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        flwr_clientapp()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkServer:
    """Serves the shims of one SuperNode: one forked ClientApp process per task.

    Parameters
    ----------
    socket_path : Path
        Where to listen (a Unix socket).
    """

    def __init__(self, socket_path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(socket_path))
        self.listener.listen(64)
        self.tasks: dict[int, socket.socket] = {}  # forked pid -> its shim's connection

    def serve_while(self, node: subprocess.Popen) -> int:
        """Fork a ClientApp for each shim until ``node`` exits; return its exit code."""
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        while node.poll() is None:
            if selector.select(timeout=0.05):
                self._fork(self.listener.accept()[0])
            self._reap()
        return int(node.returncode)

    def _fork(self, conn: socket.socket) -> None:
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError, ConnectionError) as exc:
            print(f"fork server: bad request: {exc}", file=sys.stderr, flush=True)
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.listener.close()
            conn.close()
            _run_task(request, fds)
        for fd in fds:
            os.close(fd)
        print(f"fork server: task process {pid}", file=sys.stderr, flush=True)
        conn.sendall(f"{pid}\n".encode())
        self.tasks[pid] = conn

    def _reap(self) -> None:
        """Send each finished ClientApp's exit code to its shim."""
        for pid, conn in list(self.tasks.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                with contextlib.suppress(OSError):  # the shim is gone (killed): nothing to tell
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()
                del self.tasks[pid]


def serve(node_argv: Sequence[str]) -> int:
    """Preload, start ``node_argv`` (a SuperNode) with the shim on its PATH, serve it; its exit code."""
    preload()
    with tempfile.TemporaryDirectory(prefix="fedimdb-forkserver-") as tmp:
        workdir = Path(tmp)
        server = ForkServer(workdir / "socket")
        env = {
            **os.environ,
            SOCKET_VAR: str(workdir / "socket"),
            "PATH": f"{shim_dir(workdir)}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        node = subprocess.Popen(list(node_argv), env=env)
        signal.signal(signal.SIGTERM, lambda signum, _frame: node.send_signal(signum))
        try:
            return server.serve_while(node)
        finally:
            if node.poll() is None:
                node.kill()


def argv(node_argv: Sequence[str]) -> list[str]:
    """The command line that runs ``node_argv`` behind a fork server."""
    return [sys.executable, "-m", "fedimdb.deploy.forkserver", "--", *node_argv]


def main(args: Sequence[str] | None = None) -> None:
    """``python -m fedimdb.deploy.forkserver -- flower-supernode ARGS...``"""
    args = list(sys.argv[1:] if args is None else args)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit("usage: python -m fedimdb.deploy.forkserver -- flower-supernode ARGS...")
    sys.exit(serve(args))


if __name__ == "__main__":
    main()
