"""Warm client nodes: every task runs Flower's own ``flwr-clientapp`` entry point, forked by the fork server.

The first test pins what fedimdb/deploy/forkserver.py depends on in Flower; a Flower upgrade that
changes how the SuperExec launches ClientApps fails it. The end-to-end tests run warm nodes too
(the default), so a fork server that breaks the Flower contract fails them as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from fedimdb.deploy import flwr_cli, forkserver
from fedimdb.deploy.shim import CLI, SOCKET_VAR
from fedimdb.deploy.shim import CLIENTAPP as COMMAND

pytestmark = pytest.mark.timeout(300)

NODE = """
import json, os, shutil, subprocess, sys
ok = subprocess.run(["flwr-clientapp", "--help"], capture_output=True, text=True)
bad = subprocess.run(["flwr-clientapp", "--no-such-option"], capture_output=True, text=True)
print(json.dumps({"which": shutil.which("flwr-clientapp"), "socket": os.environ.get(sys.argv[1]),
                  "ok": [ok.returncode, ok.stdout], "bad": [bad.returncode, bad.stderr]}))
sys.exit(3)
"""
"""A stand-in SuperNode: runs ``flwr-clientapp`` twice by name, prints what it saw, exits with 3."""


def test_flower_launches_clientapps_by_the_name_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    launched: list[list[str]] = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **_kw: launched.append(args))
    spec = ExecutionSpec(TaskType.CLIENT_APP, "127.0.0.1:9094", "token", True, None, False, None, False, 1)
    subprocess_executor.SubprocessExecutor().launch(spec)
    assert launched[0][0] == COMMAND
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == COMMAND]
    assert script.value == "flwr.supernode.cli:flwr_clientapp"
    from flwr.supernode.cli import flwr_clientapp
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp as entry

    assert flwr_clientapp is entry


def test_tasks_are_forked_from_the_server_with_their_arguments_streams_and_exit_codes() -> None:
    proc = subprocess.run(
        forkserver.argv([sys.executable, "-c", NODE, SOCKET_VAR]), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 3, proc.stderr[-3000:]  # the node's own exit code
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["socket"] and seen["which"].startswith(str(Path(seen["socket"]).parent))
    assert seen["ok"][0] == 0 and "Run a Flower ClientApp" in seen["ok"][1]
    assert seen["bad"][0] == 2 and "flwr-clientapp: error:" in seen["bad"][1]
    assert proc.stderr.count("fork server: task process") == 2, proc.stderr[-3000:]


def test_without_a_fork_server_the_shim_runs_flowers_own_clientapp(tmp_path: Path) -> None:
    folder = forkserver.shim_dir(tmp_path)
    env = {"PATH": f"{folder}:{Path(sys.executable).parent}"}  # Flower's flwr-clientapp beside this Python
    proc = subprocess.run([str(folder / COMMAND), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "Run a Flower ClientApp" in proc.stdout


def test_a_task_forgets_the_servers_fedimdb_modules_so_the_fabs_are_imported() -> None:
    saved = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] == "fedimdb"}
    try:
        forkserver.forget_app_modules()
        assert not [name for name in sys.modules if name.split(".")[0] == "fedimdb"]
    finally:
        sys.modules.update(saved)


def test_flwr_served_warm_answers_as_flowers_own(tmp_path: Path) -> None:
    """``flwr`` in :func:`forkserver.cli_env` is the shim, forked from the CLI fork server: same output, same exit codes."""
    env = {"FLWR_HOME": str(tmp_path)}
    flwr_cli.write_connection(tmp_path, "nobody", "127.0.0.1:9")  # seen only with FLWR_HOME passed on
    warm = forkserver.cli_env(env)
    assert Path(str(shutil.which(CLI, path=warm["PATH"]))).parent != Path(sys.executable).parent, "flwr is the shim"
    own = {**os.environ, **env}
    for args in (["--version"], ["--no-such-option"], ["ls", "nobody", "--format", "json"]):
        served = subprocess.run([CLI, *args], env=warm, capture_output=True, text=True, timeout=120)
        flower = subprocess.run([CLI, *args], env=own, capture_output=True, text=True, timeout=120)
        assert (served.returncode, served.stdout) == (flower.returncode, flower.stdout), args


KILLED_SHIM = """
import json, os, subprocess, time
server = os.getppid()
def tasks():
    kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and p != str(os.getpid())]
    return [p for p in kids if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(server)]
shim = subprocess.Popen(["flwr-clientapp", "--insecure", "--runtime-api-address", "127.0.0.1:9", "--token", "t"])
time.sleep(3)
before = tasks()
shim.kill()
shim.wait()
time.sleep(2)
print(json.dumps([before, tasks()]))
"""
"""A stand-in SuperNode whose ClientApp shim is SIGKILLed while its task waits for a Runtime API that is not there."""


def test_a_task_whose_shim_is_killed_is_killed_too() -> None:
    proc = subprocess.run(
        forkserver.argv([sys.executable, "-c", KILLED_SHIM]), capture_output=True, text=True, timeout=240
    )
    before, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(before) == 1 and after == [], (before, after, proc.stderr[-2000:])
