"""``python orchestrate.py --sweep KEY=V1,V2 ...``: a sweep from the command line, new or resumed.

Every cell's settings are built and checked, the backend chosen and every cell's shards prepared
before the first cell runs; then :class:`~fedimdb.sweep.loop.Sweep` runs the cells.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedimdb.command_settings import (
    RUN_OPTIONS,
    interrupt_on_sigterm,
    load_settings,
    note_ignored_on_resume,
    recorded_settings,
    refuse_if_running,
    set_values,
)
from fedimdb.config import ConfigError, Settings
from fedimdb.data import ShardError, prepare_shards, verify_shards
from fedimdb.deploy.choice import choose_backend
from fedimdb.experiment import console
from fedimdb.experiment_record import ExperimentStatus
from fedimdb.preflight import preflight
from fedimdb.sweep.grid import ALPHA, Cell, cells_of, parse_axes
from fedimdb.sweep.loop import CellJob, Sweep, cell_records, load_sweep, new_sweep, new_sweep_dir
from fedimdb.sweep.record import SWEEP_FILE


def refuse_twice_set(args: argparse.Namespace, keys: list[str]) -> None:
    """An axis's setting may not also be given as an option or with --set."""
    given = {
        name.replace("_", "-"): f"--{name.replace('_', '-')}" for name in RUN_OPTIONS if getattr(args, name) is not None
    }
    given |= {key.replace("_", "-"): f"--set {key}" for key in set_values(args)}
    partitioning = [f"--{name}" for name in ("partitioner", "alpha") if getattr(args, name) is not None]
    if partitioning:
        given[ALPHA] = " and ".join(partitioning)
    both = [f"--sweep {key} and {given[key]}" for key in keys if key in given]
    if both:
        raise ConfigError(f"{'; '.join(both)} both set it: drop the option, the sweep gives its values")


def cell_settings(args: argparse.Namespace, cell: Cell, shards_dir: str) -> Settings:
    """A new cell's settings: the sweep's own with the cell's values on top, its shards in a folder of their own
    when the cell's partitioning is its own."""
    data = cell.data_values()
    if cell.data_tag():
        data["shards_dir"] = f"{shards_dir}-{cell.data_tag()}"
    try:
        return load_settings(args, cell.run_values(), data)
    except ConfigError as exc:
        raise ConfigError(f"sweep cell {cell.name}: {exc}") from None


def new_cells(args: argparse.Namespace) -> list[tuple[Cell, Settings]]:
    """Every cell of the ``--sweep`` grid with its settings, each checked."""
    if args.keep_up:
        raise ConfigError("--keep-up keeps one Compose stack up; a sweep runs many: drop --keep-up")
    axes = parse_axes(args.sweep)
    refuse_twice_set(args, [a.key for a in axes])
    shared = load_settings(args)
    return [(cell, cell_settings(args, cell, shared.data.shards_dir)) for cell in cells_of(axes)]


def sweep_main(args: argparse.Namespace, sweep_dir: Path | None) -> int:
    """A new sweep (``sweep_dir`` None) or the one in ``sweep_dir`` resumed; the exit code."""
    try:
        if sweep_dir is None:
            cells = new_cells(args)
            settings = [s for _, s in cells]
        else:
            note_ignored_on_resume(args, sweep_dir / SWEEP_FILE, also=("sweep", "tta_target"))
            record = load_sweep(sweep_dir)
            refuse_if_running(f"sweep {sweep_dir.name}", record.status, record.orchestrator)
            settings = [recorded_settings(r, args) for r in cell_records(sweep_dir, record)]
        backend = choose_backend(settings[0].experiment.backend, args.compose_file, log=console.print)
        shards = {}
        for s in settings:
            preflight(s, backend.name, args.out)
            if s.data.shards_dir not in shards:
                shards[s.data.shards_dir] = prepare_shards(s.data, log=console.print)
                verify_shards(shards[s.data.shards_dir])
    except (ConfigError, ShardError) as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 2
    if sweep_dir is None:
        sweep_dir = new_sweep_dir(args.out)
        record = new_sweep(sweep_dir, parse_axes(args.sweep), cells, backend.name, args.tta_target)
    jobs = [
        CellJob(cell, s, r, shards[s.data.shards_dir])
        for cell, s, r in zip(record.cells, settings, cell_records(sweep_dir, record), strict=True)
    ]
    console.print(
        f"sweep {sweep_dir}: {len(jobs)} cells x {settings[0].experiment.repeats} repeats, backend {backend.name}"
    )
    return _run(Sweep(sweep_dir, record, jobs, backend), sweep_dir)


def _run(sweep: Sweep, sweep_dir: Path) -> int:
    """Run the sweep; Ctrl-C or a failure of the orchestrator itself is recorded, what was collected kept."""
    hint = f"Resume with: python orchestrate.py --out {sweep_dir.parent} --resume {sweep_dir.name}"
    interrupt_on_sigterm()
    try:
        return sweep.run()
    except KeyboardInterrupt:
        sweep.end(ExperimentStatus.INTERRUPTED)
        console.print(f"interrupted; what was collected is kept. {hint}")
        return 130
    except Exception as exc:  # a bug or an unforeseen failure: say so, keep the records true, no traceback
        sweep.end(ExperimentStatus.FAILED, f"{type(exc).__name__}: {exc}")
        console.print(
            f"error: the orchestrator failed ({type(exc).__name__}: {exc}); sweep.json says so and what was "
            f"collected is kept. Please report it. {hint}",
            style="red",
            markup=False,
        )
        return 1
