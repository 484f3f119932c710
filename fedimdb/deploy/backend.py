"""The one interface both deployments offer the experiment loop: bring up, run, collect, tear down.

A :class:`Stack` is one attempt at one repeat on a fresh deployment::

    with backend.make(job) as stack:   # up(); down() on the way out, whatever happened
        stack.run(on_round)            # submit the run and follow it to its end
        stack.collect()                # its artifacts into job.run_dir

The deployments implement it (fedimdb/deploy/docker_backend.py: a Compose stack;
fedimdb/deploy/local.py: local processes) and fedimdb/deploy/choice.py picks one; this module
imports neither.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from fedimdb.config import DataConfig, ExperimentConfig, RunConfig

Log = Callable[[str], None]
RoundCallback = Callable[[int], None]
HandleCallback = Callable[[dict[str, Any]], None]


class StackError(RuntimeError):
    """A deployment did not bring a run to its end: another attempt on a fresh stack may."""


def attempt_name(experiment_id: str, repeat: int, attempt: int) -> str:
    """A name unique to one attempt, valid as a Compose project name (lower-case letters, digits, - and _)."""
    return re.sub(r"[^a-z0-9_-]", "-", f"fedimdb-{experiment_id}-r{repeat}-a{attempt}".lower())


@dataclass(frozen=True)
class StackJob:
    """One attempt at one repeat: its settings, its shards, and where its artifacts must end up."""

    run: RunConfig
    data: DataConfig
    shards: Path
    run_dir: Path
    name: str  # unique per attempt: the Compose project name, or a label in logs
    keep_up: bool = False
    nodes: ExperimentConfig = field(default_factory=ExperimentConfig)  # how the SuperNodes run (warm, polling)
    metrics_dir: Path | None = None  # local backend: where Flower's processes record metrics for the orchestrator


class Stack(ABC):
    """One repeat's deployment; a context manager that is up inside the ``with`` block."""

    def __init__(self, job: StackJob, log: Log) -> None:
        self.job = job
        self.log = log
        self.on_handle: HandleCallback = lambda handle: None
        """Called with the new :meth:`handle` whenever it changes while up (a restarted process)."""

    @abstractmethod
    def up(self) -> None:
        """Start the SuperLink and the SuperNodes."""

    @abstractmethod
    def run(self, on_round: RoundCallback) -> None:
        """Submit the run, call ``on_round(k)`` as rounds complete, return once it completed; raise if not."""

    @abstractmethod
    def collect(self) -> None:
        """Put the run's artifacts into ``job.run_dir`` (verified by the caller)."""

    @abstractmethod
    def handle(self) -> dict[str, Any]:
        """What another orchestrator needs to stop this stack should this one be killed (kept in experiment.json)."""

    @abstractmethod
    def down(self) -> None:
        """Stop everything and keep the deployment's logs in ``job.run_dir``; safe to call twice."""

    def __enter__(self) -> Stack:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.down()


@dataclass(frozen=True)
class Backend:
    """A deployment by name, and how to make one attempt's stack on it."""

    name: str
    make: Callable[[StackJob], Stack]
    stop_leftover: Callable[[Mapping[str, Any], Path], str]
    """Stops what a killed orchestrator left running, given its stack's ``handle()`` and the attempt's run folder
    (where what it archived is kept, to be continued); says what it did."""
    process_metrics: bool = False
    """Whether Flower's processes record metrics in ``StackJob.metrics_dir`` for the orchestrator to serve."""
    continues: bool = False
    """Whether a failed attempt's folder on this machine can be handed to the next attempt's ServerApp
    (``continue-from``), so that it goes on after the last round that one archived."""
