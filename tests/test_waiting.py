"""Bounded waits (fedimdb/waiting.py): a condition checked until it holds or time is up; a slow service
retried until it has been silent too long. Fractions of a second each; the real waits: tests/test_reliability.py."""

from __future__ import annotations

import time

import pytest

from fedimdb.waiting import patiently, wait_until

pytestmark = pytest.mark.timeout(30)


def test_wait_until_returns_as_soon_as_the_condition_holds() -> None:
    calls: list[float] = []

    def third_time() -> bool:
        calls.append(time.monotonic())
        return len(calls) == 3

    assert wait_until(third_time, timeout=10, step=0.01)
    assert len(calls) == 3


def test_wait_until_gives_up_after_its_timeout_having_asked_once_more_at_the_end() -> None:
    calls: list[float] = []
    start = time.monotonic()
    assert not wait_until(lambda: bool(calls.append(time.monotonic())), timeout=0.2, step=0.05)
    assert calls[-1] - start >= 0.2 and len(calls) >= 3


def test_wait_until_with_no_time_asks_once() -> None:
    calls: list[int] = []
    assert not wait_until(lambda: bool(calls.append(1)), timeout=0, step=1)
    assert calls == [1]


def test_a_condition_that_raises_ends_the_wait() -> None:
    def died() -> bool:
        raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="died"):
        wait_until(died, timeout=10, step=1)


def test_patiently_retries_a_silent_service_then_gives_up_with_the_callers_error() -> None:
    tries: list[int] = []

    def silent() -> int:
        tries.append(1)
        raise TimeoutError("no answer")

    with pytest.raises(ValueError, match=r"the service has not answered for 0 s \(no answer\)"):
        patiently(
            silent, retry_on=(TimeoutError,), what="the service", patience=0.05, give_up=ValueError, first_wait=0.02
        )
    assert len(tries) >= 2
    answers = iter([TimeoutError("slow"), 7])

    def slow() -> int:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert patiently(slow, retry_on=(TimeoutError,), what="s", patience=5, give_up=ValueError, first_wait=0.01) == 7


def test_a_long_step_does_not_stretch_the_timeout() -> None:
    start = time.monotonic()
    assert not wait_until(lambda: False, timeout=0.1, step=10)
    assert time.monotonic() - start < 2
