"""A sweep: every cell of the grid as an experiment of its own, one after another, then the comparison.

Every cell's folder and experiment.json are written before the first cell runs, so ``--resume`` of a
sweep finds each cell's settings whether it ran or not, and goes on cell by cell: a completed cell is
left as it is, and in the others the verified repeats are kept and the rest run, as for one
experiment (fedimdb/experiment.py).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedimdb.artifacts import read_json, utc_now, write_json_atomic
from fedimdb.config import ConfigError, Settings
from fedimdb.deploy.backend import Backend
from fedimdb.experiment import Experiment, console, load_record, new_record
from fedimdb.experiment_record import EXPERIMENT_FILE, ExperimentRecord, ExperimentStatus, Orchestrator
from fedimdb.json_model import RecordError
from fedimdb.sweep.files import SWEEP_MD, write_sweep_files
from fedimdb.sweep.grid import Axis, Cell
from fedimdb.sweep.record import SWEEP_FILE, SweepAxis, SweepCell, SweepRecord


@dataclass
class CellJob:
    """A cell ready to run: its settings, its experiment's record and its shards."""

    cell: SweepCell
    settings: Settings
    record: ExperimentRecord
    shards: Path


def new_sweep_dir(out: Path) -> Path:
    """A fresh, never reused folder: UTC time and a random suffix."""
    path = out / f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-sweep-{secrets.token_hex(2)}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def new_sweep(
    sweep_dir: Path, axes: list[Axis], cells: list[tuple[Cell, Settings]], backend: str, target: float
) -> SweepRecord:
    """sweep.json and every cell's folder and experiment.json, before any cell runs."""
    record = SweepRecord(sweep_dir.name, utc_now(), [SweepAxis(a.key, list(a.values)) for a in axes], target)
    for cell, settings in cells:
        (sweep_dir / cell.name).mkdir()
        exp = new_record(sweep_dir / cell.name, settings, backend)
        write_json_atomic(sweep_dir / cell.name / EXPERIMENT_FILE, exp.to_json())
        record.cells.append(SweepCell(cell.name, dict(cell.values)))
    write_json_atomic(sweep_dir / SWEEP_FILE, record.to_json())
    return record


def load_sweep(sweep_dir: Path) -> SweepRecord:
    """An existing sweep's sweep.json, checked field by field (ConfigError naming the file if it is damaged)."""
    try:
        record = SweepRecord.from_json(read_json(sweep_dir / SWEEP_FILE))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem = str(exc) if isinstance(exc, RecordError) else f"it cannot be read as JSON ({exc})"
        raise ConfigError(
            f"--resume: {sweep_dir / SWEEP_FILE} is damaged: {problem}; its cells' folders are kept"
        ) from None
    return record


def cell_records(sweep_dir: Path, record: SweepRecord) -> list[ExperimentRecord]:
    """Each cell's experiment.json, in the sweep's order."""
    return [load_record(sweep_dir / cell.name) for cell in record.cells]


class Sweep:
    """The cells' experiments one after another, then the comparison; resumable at any point."""

    def __init__(self, sweep_dir: Path, record: SweepRecord, jobs: list[CellJob], backend: Backend) -> None:
        self.sweep_dir, self.record, self.jobs, self.backend = sweep_dir, record, jobs, backend
        self.current: CellJob | None = None

    def save(self) -> None:
        """Rewrite sweep.json atomically."""
        write_json_atomic(self.sweep_dir / SWEEP_FILE, self.record.to_json())

    def run(self) -> int:
        """Every cell, then sweep.csv and the rest; exit code 0 only when every cell completed."""
        self.record.status = ExperimentStatus.RUNNING
        self.record.orchestrator = Orchestrator(os.getpid(), socket.gethostname())
        self.save()
        stopped = False
        for i, job in enumerate(self.jobs, 1):
            if job.cell.status == ExperimentStatus.COMPLETED:
                console.print(
                    f"sweep {self.sweep_dir.name}: cell {i}/{len(self.jobs)}, {job.cell.name}: completed "
                    "earlier, kept as it is"
                )
                continue
            console.print(f"sweep {self.sweep_dir.name}: cell {i}/{len(self.jobs)}, {job.cell.name}")
            self.current = job
            Experiment(self.sweep_dir / job.cell.name, job.record, job.settings, self.backend, job.shards, False).run()
            job.cell.status = job.record.status
            self.save()
            if job.record.status != ExperimentStatus.COMPLETED and job.settings.experiment.on_failure == "stop":
                console.print(
                    f"cell {job.cell.name} did not complete; stopping the sweep (--on-failure continue goes on)"
                )
                stopped = True
                break
        self.current = None
        tests = write_sweep_files(self.sweep_dir, self.record)
        done = sum(cell.status == ExperimentStatus.COMPLETED for cell in self.record.cells)
        complete = done == len(self.record.cells)
        self.end(
            ExperimentStatus.COMPLETED
            if complete
            else ExperimentStatus.STOPPED
            if stopped
            else ExperimentStatus.INCOMPLETE
        )
        significant = sum(t.significant for t in tests)
        console.print(
            f"sweep {self.sweep_dir.name}: {done}/{len(self.record.cells)} cells completed; {significant} of "
            f"{len(tests)} paired differences significant at 5 %; see {self.sweep_dir / SWEEP_MD}"
        )
        return 0 if complete else 1

    def end(self, status: ExperimentStatus, error: str | None = None) -> None:
        """Record how the sweep ended, and the cell that was running if it ended mid-cell."""
        if self.current is not None:
            self.current.record.status, self.current.record.ended = status, utc_now()
            self.current.record.error = error
            write_json_atomic(self.sweep_dir / self.current.cell.name / EXPERIMENT_FILE, self.current.record.to_json())
            self.current.cell.status = status
        self.record.status, self.record.ended = status, utc_now()
        self.save()
