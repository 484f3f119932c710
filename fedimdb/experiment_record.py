"""experiment.json as typed dataclasses: what an experiment, each repeat and each attempt record.

:class:`ExperimentRecord` is the one model of the file, written and read (every field's JSON type
checked, :class:`~fedimdb.json_model.RecordError` naming what does not fit) by fedimdb/json_model.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fedimdb.json_model import from_json, to_json

EXPERIMENT_FILE = "experiment.json"


class ExperimentStatus(StrEnum):
    """The experiment's status."""

    RUNNING = "running"
    COMPLETED = "completed"  # every repeat verified
    STOPPED = "stopped"  # a repeat failed and --on-failure stop ended the experiment
    INCOMPLETE = "incomplete"  # some repeats are not verified: --resume runs them
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    FAILED = "failed"  # the orchestrator itself failed


class RepeatStatus(StrEnum):
    """A repeat's status, and each of its attempts'."""

    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CORRUPT = "corrupt"  # verified once, its artifacts no longer match their hashes: set aside, run again
    ABANDONED = "abandoned"  # its orchestrator was killed mid-attempt; the stack it left was stopped on --resume


@dataclass
class Attempt:
    """One attempt at a repeat, on a stack of its own."""

    attempt: int
    started: str
    status: RepeatStatus = RepeatStatus.RUNNING
    stack: dict[str, Any] | None = None  # what stops the stack should this orchestrator be killed
    seconds: float | None = None
    error: str | None = None
    set_aside: str | None = None  # the folder a failed attempt's files were moved to
    continued_from: str | None = None  # the set-aside folder of the attempt this one continued ...
    continued_after_round: int | None = None  # ... after its last archived round
    leftovers: str | None = None  # what --resume did about the stack an abandoned attempt left


@dataclass
class Repeat:
    """One repeat (seed + k) and its attempts."""

    seed: int
    attempts: list[Attempt] = field(default_factory=list)
    status: RepeatStatus | None = None
    seconds: float | None = None
    run_id: int | None = None
    final_accuracy: float | None = None
    final_loss: float | None = None
    error: str | None = None
    moved_to: str | None = None  # where a corrupt repeat's folder went
    set_aside: list[str] = field(default_factory=list)  # unfinished folders a killed orchestrator left


@dataclass
class Orchestrator:
    """The process that runs (or ran) the experiment."""

    pid: int
    host: str


@dataclass
class ExperimentRecord:
    """The whole of experiment.json.

    ``experiment``, ``config`` and ``data`` are the three settings' ``as_dict()`` (fedimdb/config.py
    validates them when a resume reads them); ``repeats`` is keyed by the repeat's number as a string.
    """

    experiment_id: str
    backend: str
    created: str
    experiment: dict[str, Any]
    config: dict[str, Any]
    data: dict[str, Any]
    repeats: dict[str, Repeat]
    seeds: list[int] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    status: ExperimentStatus | None = None
    orchestrator: Orchestrator | None = None
    ended: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of experiment.json."""
        return to_json(self)

    @classmethod
    def from_json(cls, value: Any) -> ExperimentRecord:
        """The record in a parsed experiment.json; RecordError names what does not fit."""
        return from_json(cls, value)
