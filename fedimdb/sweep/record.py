"""sweep.json as typed dataclasses: the grid, the cells' folders and the sweep's status.

Written and read (every field's JSON type checked) by fedimdb/json_model.py, as experiment.json is.
Each cell's own settings and repeats are in its folder's experiment.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedimdb.experiment_record import ExperimentStatus, Orchestrator
from fedimdb.json_model import from_json, to_json

SWEEP_FILE = "sweep.json"


@dataclass
class SweepAxis:
    """One axis: the setting and its values, in the order given (a JSON object would not keep the axes' order)."""

    key: str
    values: list[str]


@dataclass
class SweepCell:
    """One cell: its folder (an experiment) and the values that make it."""

    name: str
    values: dict[str, str]
    status: ExperimentStatus | None = None  # its experiment's, once it ran


@dataclass
class SweepRecord:
    """A sweep: its axes in order, its cells, and the accuracy its time-to-accuracy counts to."""

    sweep_id: str
    created: str
    axes: list[SweepAxis]
    tta_target: float
    cells: list[SweepCell] = field(default_factory=list)
    status: ExperimentStatus = ExperimentStatus.RUNNING
    orchestrator: Orchestrator | None = None
    ended: str | None = None

    def to_json(self) -> Any:
        """sweep.json's contents."""
        return to_json(self)

    @classmethod
    def from_json(cls, value: Any) -> SweepRecord:
        """Read back (RecordError names a field that does not fit)."""
        return from_json(cls, value)
