"""``python orchestrate.py``: the command line of an experiment (N repeats of one federated run).

Options override ``.env`` / ``FEDIMDB_*`` values, which override the defaults declared in
fedimdb/config.py. Everything is validated, the backend chosen and the shards prepared before
any repeat starts; then :class:`~fedimdb.experiment.Experiment` runs the repeats.
"""

from __future__ import annotations

import argparse
import signal
import socket
from pathlib import Path
from typing import Any

from fedimdb.artifacts import utc_now
from fedimdb.config import (
    BACKENDS,
    DOCKER_BACKEND,
    ENV_FILE,
    MODEL_PRESETS,
    PARTITIONERS,
    STRATEGIES,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    RunConfig,
    Settings,
    check_clients_fit,
    check_env_file,
)
from fedimdb.data import ShardError, prepare_shards, verify_shards
from fedimdb.deploy.choice import choose_backend
from fedimdb.deploy.compose import COMPOSE_FILE
from fedimdb.deploy.proc import runs_one_of
from fedimdb.experiment import Experiment, console, load_record, new_experiment_dir, new_record
from fedimdb.experiment_record import EXPERIMENT_FILE, ExperimentRecord, ExperimentStatus
from fedimdb.preflight import preflight

RUN_OPTIONS = ("num_rounds", "num_clients", "model", "strategy", "seed")
DATA_OPTIONS = ("data_source", "partitioner", "alpha", "shards_dir")
EXPERIMENT_OPTIONS = (
    "backend",
    "repeats",
    "retries",
    "on_failure",
    "metrics_port",
    "monitoring",
    "app_dir",
    "sim_client_cpus",
    "sim_client_gpus",
    "ray_address",
)
RESUMABLE_OPTIONS = ("retries", "on_failure", "metrics_port", "monitoring")  # what --resume may change


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
        "--resume",
        metavar="EXPERIMENT_ID",
        help="finish that experiment in --out with its recorded settings: verified repeats are kept, the others "
        "redone; only --retries, --on-failure, --metrics-port and --monitoring may change",
    )
    add("--keep-up", action="store_true", help="docker backend: leave the last repeat's stack up for inspection")
    add("--compose-file", type=Path, default=COMPOSE_FILE, help="docker: the stack (default: docker-compose.yml)")
    add("--out", type=Path, default=Path("results"), help="results root (default: results)")
    add("--env-file", type=Path, help=f"settings file (default: {ENV_FILE})")
    return p


def _options(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names}


def load_settings(args: argparse.Namespace) -> Settings:
    """The three configurations from defaults < --env-file < environment < options, validated."""
    env_file = args.env_file or ENV_FILE
    check_env_file(env_file, given=args.env_file is not None)
    run_overrides = _options(args, RUN_OPTIONS)
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write it as KEY=VALUE, e.g. --set max-steps=5")
        run_overrides[key.strip()] = value
    settings = Settings(
        run=RunConfig.from_env(env_file, overrides=run_overrides),
        data=DataConfig.from_env(env_file, overrides=_options(args, DATA_OPTIONS)),
        experiment=ExperimentConfig.from_env(env_file, overrides=_options(args, EXPERIMENT_OPTIONS)),
    )
    check_clients_fit(settings.run, settings.data.num_partitions)
    return settings


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
    given = [
        f"--{n.replace('_', '-')}"
        for n in (*RUN_OPTIONS, *DATA_OPTIONS, "backend", "repeats")
        if getattr(args, n) is not None
    ]
    given += ["--set"] * bool(args.settings)
    if given:
        console.print(
            f"notice: --resume takes every setting from {exp_dir / EXPERIMENT_FILE}; ignoring {', '.join(given)} "
            "(only --retries, --on-failure, --metrics-port and --monitoring apply to a resumed experiment)"
        )
    record = load_record(exp_dir)
    owner = record.orchestrator
    alive = owner is not None and owner.host == socket.gethostname() and runs_one_of(owner.pid, (b"orchestrate",))
    if record.status == ExperimentStatus.RUNNING and alive:
        assert owner is not None
        raise ConfigError(
            f"--resume: experiment {exp_dir.name} is still being run by process {owner.pid}; wait for it, or "
            "stop it (Ctrl-C) and resume then"
        )
    recorded = dict(record.experiment)
    recorded.update({k.replace("_", "-"): v for k, v in _options(args, RESUMABLE_OPTIONS).items() if v is not None})
    settings = Settings(
        run=RunConfig.from_mapping(record.config),
        data=DataConfig.from_mapping(record.data),
        experiment=ExperimentConfig.from_mapping(recorded),
    )
    return settings, record


def _interrupt_on_sigterm() -> None:
    """SIGTERM (e.g. docker stop, a CI timeout) tears down like Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _resume_hint(exp_dir: Path) -> str:
    return f"Resume with: python orchestrate.py --out {exp_dir.parent} --resume {exp_dir.name}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of orchestrate.py: validate everything, then run or resume the experiment."""
    args = build_parser().parse_args(argv)
    exp_dir = args.out / args.resume if args.resume else None
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
    _interrupt_on_sigterm()
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
