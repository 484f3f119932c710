"""Warm Flower commands: a fork server with the heavy libraries already imported forks each call.

Flower 1.39 starts a fresh ``flwr-clientapp`` process for every message, which imports flwr,
torch and transformers again (1.4-2.5 CPU-s each time). ``python -m fedimdb.deploy.forkserver
-- flower-supernode ...`` imports them once, starts the SuperNode as its child with
:mod:`fedimdb.deploy.shim` first on its PATH as ``flwr-clientapp``, and for every task
the shim hands over, forks a process that runs Flower's own ``flwr-clientapp`` entry point with
the task's arguments and standard streams (a client container's SuperNode). ``python -m
fedimdb.deploy.forkserver --nodes`` serves every SuperNode of a host instead (the local backend's):
the libraries are imported once for all of them, and each SuperNode runs with the shim first on its
PATH. Flower's contract holds: every message still gets a process of its own, which pulls the task,
installs the FAB and imports the app's code from it, and reports errors and crashes as Flower does;
only the library imports are shared.

The ``flwr`` command line costs ~0.9 CPU-s a call, nearly all of it imports. :func:`cli_env` gives
the environment in which ``flwr`` is that shim, served by one fork server per process that
imported flwr's CLI once (``python -m fedimdb.deploy.forkserver --cli``, started on first use).

What this depends on in Flower (tests/test_forkserver.py fails when an upgrade breaks it): the
SuperExec launches ClientApps by the name ``flwr-clientapp`` looked up on PATH, and
``flwr.supernode.cli.flwr_clientapp.flwr_clientapp`` is that command's entry point, as
``flwr.cli.app.app`` is ``flwr``'s.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import fedimdb
from fedimdb.deploy.shim import CLI, CLIENTAPP, COMMANDS, SOCKET_VAR

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
"""Imported once by a node's fork server; the app's own modules still come from each run's FAB."""
ENTRY_POINTS = {CLIENTAPP: ("flwr.supernode.cli.flwr_clientapp", "flwr_clientapp"), CLI: ("flwr.cli.app", "app")}
"""Each command's console-script entry point (module, name), as Flower's package declares it."""
CLI_PRELOAD = ("flwr.cli.app",)
CLI_START_TIMEOUT = 120.0  # seconds the flwr fork server may take to import flwr's command line
CLI_FLAG = "--cli"  # python -m fedimdb.deploy.forkserver --cli: the fork server of the flwr command line
NODES_FLAG = "--nodes"  # python -m fedimdb.deploy.forkserver --nodes: one fork server for a host's SuperNodes
TRANSFORMERS_NAMES = ("AutoConfig", "AutoModelForSequenceClassification", "AutoTokenizer", "PreTrainedTokenizerFast")
REQUEST_LIMIT = 1 << 16
APP_PACKAGE = fedimdb.__name__  # this server runs from it, but a task must import the FAB's copy


def preload(modules: Sequence[str] = PRELOAD) -> None:
    """Import what every forked process needs; run no torch code (forked OpenMP pools hang)."""
    for module in modules:
        with contextlib.suppress(ImportError):  # best effort: a transformers without one just loads it later
            importlib.import_module(module)
    transformers = sys.modules.get("transformers")
    for name in TRANSFORMERS_NAMES:
        getattr(transformers, name, None)


def shim_dir(workdir: Path) -> Path:
    """A folder holding the shim under each name of :data:`COMMANDS`, run by this Python with ``-IS``."""
    folder = workdir / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).with_name("shim.py").read_text()
    for command in COMMANDS:
        shim = folder / command
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
    """In the forked child: become ``COMMAND ARGS`` as the shim was called; never returns."""
    code = 1
    try:
        forget_app_modules()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        command = request["command"]
        sys.argv = [command, *request["argv"]]
        module, name = ENTRY_POINTS[command]
        getattr(importlib.import_module(module), name)()
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
    """Serves the shims that call it: one forked process per call.

    Parameters
    ----------
    socket_path : Path
        Where to listen (a Unix socket).
    announce : bool
        Whether to print each forked process's pid to stderr (a node's log).
    """

    def __init__(self, socket_path: Path, announce: bool = True) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(socket_path))
        self.listener.listen(64)
        self.announce = announce
        self.tasks: dict[int, socket.socket] = {}  # forked pid -> its shim's connection

    def serve_while(self, running: Callable[[], bool]) -> None:
        """Fork a process for each shim's call as long as ``running()`` (asked every 0.05 s)."""
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        while running():
            if selector.select(timeout=0.05):
                self._fork(self.listener.accept()[0])
            self._reap()

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
        if self.announce:
            print(f"fork server: task process {pid}", file=sys.stderr, flush=True)
        conn.sendall(f"{pid}\n".encode())
        self.tasks[pid] = conn

    def _reap(self) -> None:
        """Send each finished process's exit code to its shim; kill a process whose shim is gone."""
        for pid, conn in list(self.tasks.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                with contextlib.suppress(OSError):  # the shim is gone (killed): nothing to tell
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()
                del self.tasks[pid]
            elif _hung_up(conn):  # its caller was killed (a timeout): nobody waits for it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _hung_up(conn: socket.socket) -> bool:
    """Whether the shim at the other end of ``conn`` closed it (it sends nothing after its request)."""
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _listening(workdir: Path, announce: bool = True) -> tuple[ForkServer, dict[str, str]]:
    """A fork server on a socket in ``workdir``; the variables that put its shims first on PATH."""
    server = ForkServer(workdir / "socket", announce)
    path = f"{shim_dir(workdir)}{os.pathsep}{os.environ.get('PATH', '')}"
    return server, {SOCKET_VAR: str(workdir / "socket"), "PATH": path}


def serve(node_argv: Sequence[str]) -> int:
    """Preload, start ``node_argv`` (a SuperNode) with the shim on its PATH, serve it; its exit code."""
    preload()
    with tempfile.TemporaryDirectory(prefix="fedimdb-forkserver-") as tmp:
        server, shims = _listening(Path(tmp))
        node = subprocess.Popen(list(node_argv), env={**os.environ, **shims})
        signal.signal(signal.SIGTERM, lambda signum, _frame: node.send_signal(signum))
        try:
            server.serve_while(lambda: node.poll() is None)
            return int(node.returncode)
        finally:
            if node.poll() is None:
                node.kill()


def _caller_gone() -> bool:
    """Whether the process that started this server closed its end of our stdin (it exited)."""
    readable, _, _ = select.select([sys.stdin.fileno()], [], [], 0)
    return bool(readable) and os.read(sys.stdin.fileno(), 1) == b""


def serve_callers(modules: Sequence[str], prefix: str, announce: bool, running: Callable[[], bool]) -> None:
    """Import ``modules``, print the variables that make the commands its shims (one JSON line), and serve
    calls as long as ``running()``."""
    preload(modules)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server, shims = _listening(Path(tmp), announce=announce)
        print(json.dumps(shims), flush=True)
        server.serve_while(running)


def start_server(
    flag: str, env: Mapping[str, str] | None = None, stderr: IO[bytes] | None = None, session: bool = False
) -> tuple[subprocess.Popen, dict[str, str]]:
    """Start ``python -m fedimdb.deploy.forkserver FLAG`` and read the variables it prints; none if it did not
    start within :data:`CLI_START_TIMEOUT` s."""
    proc = subprocess.Popen(
        [sys.executable, "-m", __name__, flag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        start_new_session=session,
    )
    assert proc.stdout is not None
    shims: dict[str, str] = {}
    if select.select([proc.stdout], [], [], CLI_START_TIMEOUT)[0]:
        with contextlib.suppress(ValueError):
            shims = json.loads(proc.stdout.readline() or b"{}")
    return proc, shims


class CliServer:
    """This process's fork server for ``flwr`` calls, started on first use and ended with this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._shims: dict[str, str] = {}

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """This process's environment with ``env`` over it, and ``flwr`` served warm if the server runs."""
        with self._lock:
            if self._proc is None:
                self._start()
        return {**os.environ, **env, **self._shims}

    def _start(self) -> None:
        """Start the server and read its variables; without them ``flwr`` stays Flower's own."""
        self._proc, self._shims = start_server(CLI_FLAG)


_CLI = CliServer()


def cli_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment to call ``flwr`` in: ``env`` over this process's, served by a warm fork server."""
    return _CLI.env(env)


def argv(node_argv: Sequence[str]) -> list[str]:
    """The command line that runs ``node_argv`` behind a fork server."""
    return [sys.executable, "-m", "fedimdb.deploy.forkserver", "--", *node_argv]


def main(args: Sequence[str] | None = None) -> None:
    """``python -m fedimdb.deploy.forkserver -- flower-supernode ARGS...``, or ``... --cli``."""
    args = list(sys.argv[1:] if args is None else args)
    if args == [CLI_FLAG]:  # until the process that started it exits
        serve_callers(CLI_PRELOAD, "fedimdb-flwr-cli-", announce=False, running=lambda: not _caller_gone())
        return
    if args == [NODES_FLAG]:  # as long as the SuperNodes it serves: stopped with them, in its own process group
        serve_callers(PRELOAD, "fedimdb-forkserver-", announce=True, running=lambda: True)
        return
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit(f"usage: python -m fedimdb.deploy.forkserver -- flower-supernode ARGS... | {CLI_FLAG}")
    sys.exit(serve(args))


if __name__ == "__main__":
    main()
