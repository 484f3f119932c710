"""Waiting, always for a bounded time: for a condition, or for a service that is slow to answer.

:func:`wait_until` checks a condition every few seconds until it holds or a timeout passes: the one
deadline loop of the code that ships (ports, process groups, clients online, a last scrape...).

Slow is not dead: on a loaded machine the SuperLink's Control API and the Docker daemon can leave a
call unanswered for a while and then carry on. The orchestrator must neither give up on the first
timeout nor wait forever: :func:`patiently` retries, backing off, until the service has been
silent for ``patience`` seconds, and only then raises the caller's error, which says for how long.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
MAX_WAIT = 30.0  # longest pause between two tries


def wait_until(done: Callable[[], bool], timeout: float, step: float) -> bool:
    """Call ``done`` every ``step`` s until it returns True, for at most ``timeout`` s.

    Parameters
    ----------
    done : Callable[[], bool]
        The condition; it may raise to end the wait early (e.g. the process waited for died).
    timeout : float
        Seconds after which the wait ends; ``done`` is asked once more then.
    step : float
        Seconds between two checks.

    Returns
    -------
    bool
        Whether the condition held before the time was up.
    """
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(step, left))
    return True


def patiently(
    call: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    what: str,
    patience: float,
    give_up: Callable[[str], Exception],
    log: Callable[[str], None] | None = None,
    first_wait: float = 1.0,
) -> T:
    """``call()``; while it raises one of ``retry_on``, try again, waiting twice as long each time.

    Parameters
    ----------
    call : Callable[[], T]
        The call to a service (a ``flwr`` command, a Docker API request).
    retry_on : tuple of exception types
        What a call that got no answer raises.
    what : str
        The service, for the messages ("the SuperLink's Control API").
    patience : float
        Seconds of silence after which the service counts as dead.
    give_up : Callable[[str], Exception]
        Builds the error raised then, from a sentence that says what was silent and for how long.
    log : Callable[[str], None], optional
        Told of each retry.
    first_wait : float, default 1.0
        Seconds before the first retry.
    """
    start = time.monotonic()
    wait = first_wait
    while True:
        try:
            return call()
        except retry_on as exc:
            silent = time.monotonic() - start
            if silent >= patience:
                raise give_up(f"{what} has not answered for {silent:.0f} s ({exc})") from None
            if log is not None:
                log(f"  {what} is slow to answer ({exc}); retrying in {wait:.0f} s")
            time.sleep(wait)
            wait = min(wait * 2, MAX_WAIT)
