"""A Flower command that a fork server serves: it hands the call over (fedimdb/deploy/forkserver.py).

Standard library only, and run with ``python -IS``: it starts in a few milliseconds. A fork server
puts this file first on PATH under the names of :data:`COMMANDS`: Flower's SuperExec launches
``flwr-clientapp`` by name once per message, and fedimdb calls ``flwr`` once per Control API request.
The shim passes the command it was called as, its arguments, working directory, environment and
standard streams to the fork server over a Unix socket, forwards SIGTERM/SIGINT to the forked
process, and exits with its exit code. Without a fork server it execs Flower's own command.
"""

import json
import os
import shutil
import signal
import socket
import sys

SOCKET_VAR = "FEDIMDB_FORKSERVER_SOCKET"  # the fork server's socket, set in the environment of who calls the shim
CLIENTAPP = "flwr-clientapp"  # Flower's SuperExec starts one per message
CLI = "flwr"  # the Control API's command line: fedimdb/deploy/flwr_cli.py
COMMANDS = (CLIENTAPP, CLI)


def flower_command(command: str) -> str:
    """Flower's own ``command``: the next one on PATH after this file's folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if os.path.abspath(d) != here)
    found = shutil.which(command, path=path)
    if found is None:
        sys.exit(f"{command}: no fork server and no Flower {command} on PATH; install flwr")
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
    """Run this call in a process forked by the fork server, or in Flower's own command."""
    command = os.path.basename(sys.argv[0])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.environ[SOCKET_VAR])
    except (KeyError, OSError):
        os.execv(flower_command(command), [command, *sys.argv[1:]])
    call = {"command": command, "argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(sock, [json.dumps(call).encode() + b"\n"], [0, 1, 2])
    child = int(read_line(sock) or 0)
    if child:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    code = read_line(sock).strip()
    sys.exit(int(code) if code else 1)


if __name__ == "__main__":
    main()
