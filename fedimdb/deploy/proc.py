"""What Linux's /proc says about a process: whether a pid still runs the program it was recorded as."""

from __future__ import annotations

from pathlib import Path


def runs_one_of(pid: int, words: tuple[bytes, ...]) -> bool:
    """Whether process ``pid`` is alive and its command line holds one of ``words`` (Linux /proc; else False)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return any(word in cmdline for word in words)
