"""run.json as a typed dataclass: what the ServerApp records of one run.

:class:`RunRecord` is the one model of the file, written and read (every field's JSON type checked,
:class:`~fedimdb.json_model.RecordError` naming what does not fit) by fedimdb/json_model.py. The
ServerApp rewrites it after every round (fedimdb/artifacts.py: ``RunArtifacts``), so a crashed run
still says how far it got; ``files`` holds the sha256 of every other file of the run's folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedimdb.json_model import from_json, to_json

RECURS = "[the same on any attempt: not retried]"
"""Starts the error of a run that failed for a cause another attempt would meet again (its configuration, or every
client's ClientApp raising the same error); the orchestrator then does not retry it (fedimdb/experiment.py)."""


class RunStatus(StrEnum):
    """A run's status in run.json."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass
class Privacy:
    """A differentially private run's guarantee: its mechanism and settings, and the (epsilon, delta) spent so far.

    ``releases`` counts the rounds whose noised aggregate was released; ``stopped`` says why the run ended
    before its last round, if the budget did that (None: it did not).
    """

    mechanism: str
    noise_multiplier: float
    clipping_norm: float
    delta: float
    target_epsilon: float | None
    epsilon: float = 0.0
    releases: int = 0
    stopped: str | None = None


@dataclass
class ContinuedFrom:
    """An earlier attempt a run continues: its run id, the last round it archived, and its folder then."""

    run_id: int
    round: int
    folder: str


@dataclass
class RunRecord:
    """The whole of run.json.

    ``config`` is the run's RunConfig ``as_dict()``, ``data`` the recipe of the shards it used (as the
    held-out set's manifest has it), ``versions`` the software it ran on; the evaluations are the
    central evaluation of the model before round 1 and of the final model on the whole held-out set;
    ``continued_from`` lists the failed attempts this run continues, oldest first (empty: it started at round 1);
    ``privacy`` is the differential-privacy guarantee, after every round (None: ``dp = off``).
    ``replaced`` holds, while files that ``files`` lists are being rewritten, their previous sha256: a run
    killed then still verifies, each such file holding either content (fedimdb/artifacts.py).
    """

    run_id: int
    seed: int
    config: dict[str, Any]
    data: dict[str, Any]
    versions: dict[str, str]
    started: str
    status: RunStatus = RunStatus.RUNNING
    rounds_completed: int = 0
    initial_evaluation: dict[str, Any] | None = None
    final_evaluation: dict[str, Any] | None = None
    ended: str | None = None
    error: str | None = None
    continued_from: list[ContinuedFrom] = field(default_factory=list)
    privacy: Privacy | None = None
    files: dict[str, str] = field(default_factory=dict)
    replaced: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of run.json."""
        return to_json(self)

    @classmethod
    def from_json(cls, value: Any) -> RunRecord:
        """The record in a parsed run.json; RecordError names what does not fit."""
        return from_json(cls, value)


def read_run_record(path: Path) -> RunRecord:
    """A run.json file as a record: OSError if unreadable, ValueError (RecordError) if it is no run.json."""
    return RunRecord.from_json(json.loads(Path(path).read_bytes()))
