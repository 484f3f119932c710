"""``python orchestrate.py``: the command line of an experiment (N repeats of one federated run).

Options override ``.env`` / ``FEDIMDB_*`` values, which override the defaults declared in
fedimdb/config.py. Everything is validated, the backend chosen and the shards prepared before
any repeat starts; then :class:`~fedimdb.experiment.Experiment` runs the repeats.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedimdb.artifacts import utc_now
from fedimdb.command_settings import (
    interrupt_on_sigterm,
    load_settings,
    note_ignored_on_resume,
    recorded_settings,
    refuse_if_running,
)
from fedimdb.config import (
    BACKENDS,
    DOCKER_BACKEND,
    ENV_FILE,
    MODEL_PRESETS,
    PARTITIONERS,
    STRATEGIES,
    ConfigError,
    Settings,
)
from fedimdb.data import ShardError, prepare_shards, verify_shards
from fedimdb.deploy.choice import choose_backend
from fedimdb.deploy.compose import COMPOSE_FILE
from fedimdb.experiment import Experiment, console, load_record, new_experiment_dir, new_record
from fedimdb.experiment_record import EXPERIMENT_FILE, ExperimentRecord, ExperimentStatus
from fedimdb.preflight import preflight
from fedimdb.sweep.command import sweep_main
from fedimdb.sweep.compare import TTA_TARGET
from fedimdb.sweep.record import SWEEP_FILE


def build_parser() -> argparse.ArgumentParser:
    """Options override .env / FEDIMDB_* values, which override the defaults in fedimdb/config.py."""
    p = argparse.ArgumentParser(
        prog="orchestrate.py",
        description="Run a federated IMDB experiment (N repeats) on real Flower deployments, collect, "
        "verify and summarise it. Options override .env.",
    )
    add = p.add_argument
    add("--repeats", type=int, help="repeats of the run; repeat k uses seed + k (FEDIMDB_REPEATS)")
    add(
        "--backend",
        choices=BACKENDS,
        help="docker: one Compose stack per repeat; local: SuperLink and SuperNodes as local processes; "
        "simulation: Flower's Simulation Engine on Ray (virtual clients); "
        "auto (default): docker when a Docker daemon answers (FEDIMDB_BACKEND)",
    )
    add("--rounds", dest="num_rounds", type=int, help="federated rounds (FEDIMDB_NUM_ROUNDS)")
    add("--clients", dest="num_clients", type=int, help="clients / SuperNodes (FEDIMDB_NUM_CLIENTS)")
    add("--model", help=f"preset {'|'.join(MODEL_PRESETS)}, local directory or hub id (FEDIMDB_MODEL)")
    add("--strategy", choices=STRATEGIES, help="aggregation strategy (FEDIMDB_STRATEGY)")
    add("--seed", type=int, help="base seed (FEDIMDB_SEED)")
    add("--data-source", help="hub id or local folder of train/test Parquet (FEDIMDB_DATA_SOURCE)")
    add("--partitioner", choices=PARTITIONERS, help="FEDIMDB_PARTITIONER")
    add("--alpha", type=float, help="Dirichlet concentration (FEDIMDB_ALPHA)")
    add("--shards-dir", help="where shards are prepared / reused (FEDIMDB_SHARDS_DIR)")
    add(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run setting, e.g. --set max-steps=5 (repeatable)",
    )
    add("--retries", type=int, help="further attempts for a failed repeat (FEDIMDB_RETRIES)")
    add("--on-failure", choices=("stop", "continue"), help="after a repeat failed every attempt (FEDIMDB_ON_FAILURE)")
    add("--metrics-port", type=int, help="Prometheus /metrics port, 0 = off (FEDIMDB_METRICS_PORT)")
    add(
        "--monitoring",
        action="store_const",
        const=True,
        help="docker backend: keep one Prometheus (localhost:9090) and Grafana (localhost:3000) up across the "
        "repeats, scraping them all (FEDIMDB_MONITORING)",
    )
    add(
        "--app-dir",
        help="run this Flower App instead of fedimdb's own: a folder with its pyproject.toml, e.g. fedimdb's "
        "ClientApp with client mods of your own (FEDIMDB_APP_DIR)",
    )
    add(
        "--sim-client-cpus",
        type=int,
        help="simulation backend: CPUs Ray reserves for each virtual client (FEDIMDB_SIM_CLIENT_CPUS)",
    )
    add(
        "--sim-client-gpus",
        type=float,
        help="simulation backend: GPUs for each virtual client, a fraction shares one (FEDIMDB_SIM_CLIENT_GPUS)",
    )
    add(
        "--ray-address",
        help="simulation backend: run the virtual clients on this running Ray cluster, host:port of its head "
        "(FEDIMDB_RAY_ADDRESS; docs/simulation.md)",
    )
    add(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run the grid of these values (repeatable: one axis each) as one sweep of experiments, e.g. --sweep "
        "strategy=fedavg,fedadam --sweep alpha=iid,0.1; a run setting as --set spells it, or alpha (iid or a "
        "Dirichlet concentration); docs/sweeps.md",
    )
    add(
        "--tta-target",
        type=float,
        default=TTA_TARGET,
        help=f"a sweep's time to accuracy counts the seconds until central accuracy reaches this (default {TTA_TARGET})",
    )
    add(
        "--resume",
        metavar="EXPERIMENT_ID",
        help="finish that experiment (or sweep) in --out with its recorded settings: verified repeats are kept, the "
        "others redone; only --retries, --on-failure, --metrics-port and --monitoring may change",
    )
    add("--keep-up", action="store_true", help="docker backend: leave the last repeat's stack up for inspection")
    add("--compose-file", type=Path, default=COMPOSE_FILE, help="docker: the stack (default: docker-compose.yml)")
    add("--out", type=Path, default=Path("results"), help="results root (default: results)")
    add("--env-file", type=Path, help=f"settings file (default: {ENV_FILE})")
    return p


def resume_settings(exp_dir: Path, args: argparse.Namespace) -> tuple[Settings, ExperimentRecord]:
    """An existing experiment's recorded settings; only retries, on-failure, metrics-port and monitoring may change.

    Run, data and experiment options given with ``--resume`` are named in a notice and ignored.
    """
    if not (exp_dir / EXPERIMENT_FILE).is_file():
        parent = exp_dir.parent
        known = sorted(p.name for p in parent.glob("*/") if (p / EXPERIMENT_FILE).is_file()) if parent.is_dir() else []
        raise ConfigError(
            f"--resume: no experiment {exp_dir.name!r} in {parent}; known: {', '.join(known[-5:]) or 'none'}"
        )
    note_ignored_on_resume(args, exp_dir / EXPERIMENT_FILE)
    record = load_record(exp_dir)
    refuse_if_running(f"experiment {exp_dir.name}", record.status, record.orchestrator)
    return recorded_settings(record, args), record


def _resume_hint(exp_dir: Path) -> str:
    return f"Resume with: python orchestrate.py --out {exp_dir.parent} --resume {exp_dir.name}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of orchestrate.py: validate everything, then run or resume the experiment."""
    args = build_parser().parse_args(argv)
    exp_dir = args.out / args.resume if args.resume else None
    if args.sweep or (exp_dir is not None and (exp_dir / SWEEP_FILE).is_file()):
        return sweep_main(args, exp_dir)
    try:
        settings, record = resume_settings(exp_dir, args) if exp_dir else (load_settings(args), None)
        backend = choose_backend(
            record.backend if record else settings.experiment.backend, args.compose_file, log=console.print
        )
        if args.keep_up and backend.name != DOCKER_BACKEND:
            raise ConfigError(
                f"--keep-up keeps a Compose stack up; the {backend.name} backend has none: drop --keep-up"
            )
        preflight(settings, backend.name, args.out)
        shards = prepare_shards(settings.data, log=console.print)
        verify_shards(shards)
    except (ConfigError, ShardError) as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 2
    if exp_dir is None:
        exp_dir = new_experiment_dir(args.out, settings.run)
        record = new_record(exp_dir, settings, backend.name)
    assert record is not None, "resume_settings returns the resumed experiment's record"
    console.print(f"experiment {exp_dir} ({settings.experiment.repeats} repeats, backend {backend.name})")
    experiment = Experiment(exp_dir, record, settings, backend, shards, args.keep_up)
    interrupt_on_sigterm()
    try:
        return experiment.run()
    except KeyboardInterrupt:
        record.status, record.ended = ExperimentStatus.INTERRUPTED, utc_now()
        experiment.save()
        console.print(f"interrupted; what was collected is kept. {_resume_hint(exp_dir)}")
        return 130
    except Exception as exc:  # a bug or an unforeseen failure: say so, keep experiment.json true, no traceback
        record.status, record.ended = ExperimentStatus.FAILED, utc_now()
        record.error = f"{type(exc).__name__}: {exc}"
        experiment.save()
        console.print(
            f"error: the orchestrator failed ({type(exc).__name__}: {exc}); experiment.json says so and what was "
            f"collected is kept. Please report it. {_resume_hint(exp_dir)}",
            style="red",
            markup=False,
        )
        return 1
