"""Stopping process groups (fedimdb/deploy/proc.py) on real processes, each in a session of its own."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from fedimdb.deploy.proc import stop_groups

pytestmark = pytest.mark.timeout(60)


def _session(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, text=True)


def test_a_stopped_group_ends_on_its_sigterm_without_waiting_out_the_grace() -> None:
    """A frozen process (SIGSTOP: a leftover someone suspended) still gets its SIGTERM at once."""
    proc = _session("sleep", "300")
    proc.send_signal(signal.SIGSTOP)
    start = time.monotonic()
    stop_groups([proc.pid], lambda _: proc.poll() is None, grace=30)
    assert proc.wait(timeout=5) == -signal.SIGTERM, "ended by its SIGTERM, not the SIGKILL after the grace"
    assert time.monotonic() - start < 20


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    proc = _session("sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 0.1; done")
    assert proc.stdout is not None and proc.stdout.readline() == "trapped\n"
    stop_groups([proc.pid], lambda _: proc.poll() is None, grace=0.5)
    assert proc.wait(timeout=5) == -signal.SIGKILL
