"""Processes by pid: whether one still runs the program it was recorded as, and stopping process groups."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from fedimdb.waiting import wait_until


def runs_one_of(pid: int, words: tuple[bytes, ...]) -> bool:
    """Whether process ``pid`` is alive and its command line holds one of ``words`` (Linux /proc; else False)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(word in cmdline for word in words)


def children(pid: int, word: bytes) -> list[int]:
    """The live child processes of ``pid`` whose command line holds ``word`` (Linux /proc; else none)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after "pid (comm) state"
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == pid and runs_one_of(int(stat.parent.name), (word,)):
            found.append(int(stat.parent.name))
    return found


def stop_groups(groups: Sequence[int], running: Callable[[int], bool], grace: float = 10.0) -> None:
    """SIGTERM every process group, wait up to ``grace`` s while a leader is ``running``; then SIGKILL alike.

    SIGCONT follows the SIGTERM, as systemd does: a stopped process (SIGSTOP, Ctrl-Z) acts on its SIGTERM
    only once continued, and would otherwise wait out the grace for its SIGKILL. The SIGKILL goes to every
    group, also those whose leader has exited: its children may not have.
    """
    for signals in ((signal.SIGTERM, signal.SIGCONT), (signal.SIGKILL,)):
        for group in groups:
            for sig in signals:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, sig)
        wait_until(lambda: not any(running(g) for g in groups), grace, step=0.1)
