"""The ``flwr-clientapp`` that a warm node's SuperNode starts: hands the task to the fork server.

Standard library only, and run with ``python -IS``: it starts in a few milliseconds. Flower's
SuperExec launches ``flwr-clientapp --runtime-api-address ... --token ...`` by name from PATH
once per message; the fork server (fedimdb/deploy/forkserver.py) puts this file first on the
SuperNode's PATH under that name. It passes its arguments, working directory and standard
streams to the fork server over a Unix socket, forwards SIGTERM/SIGINT to the forked ClientApp,
and exits with its exit code. Without a fork server it execs Flower's own ``flwr-clientapp``.
"""

import json
import os
import shutil
import signal
import socket
import sys

SOCKET_VAR = "FEDIMDB_FORKSERVER_SOCKET"  # the fork server's socket, set in the SuperNode's environment
COMMAND = "flwr-clientapp"


def flower_clientapp() -> str:
    """Flower's own ``flwr-clientapp``: the next one on PATH after this file's folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if os.path.abspath(d) != here)
    found = shutil.which(COMMAND, path=path)
    if found is None:
        sys.exit(f"{COMMAND}: no fork server and no Flower {COMMAND} on PATH; install flwr")
    return found


def read_line(sock: socket.socket) -> bytes:
    """One newline-terminated reply of the fork server (empty if it hung up)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            break
        data += chunk
    return data


def main() -> None:
    """Run this task in a process forked by the fork server, or in Flower's own ``flwr-clientapp``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.environ[SOCKET_VAR])
    except (KeyError, OSError):
        os.execv(flower_clientapp(), [COMMAND, *sys.argv[1:]])
    request = json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}).encode() + b"\n"
    socket.send_fds(sock, [request], [0, 1, 2])
    child = int(read_line(sock) or 0)
    if child:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    code = read_line(sock).strip()
    sys.exit(int(code) if code else 1)


if __name__ == "__main__":
    main()
