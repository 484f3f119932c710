"""The command line's settings: options, ``--set``, ``.env`` and the environment, or a resumed
experiment's recorded ones, as one validated :class:`~fedimdb.config.Settings` (an experiment's or a
sweep cell's)."""

from __future__ import annotations

import argparse
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedimdb.config import (
    ENV_FILE,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    RunConfig,
    Settings,
    check_clients_fit,
    check_env_file,
)
from fedimdb.deploy.proc import runs_one_of
from fedimdb.experiment import console
from fedimdb.experiment_record import ExperimentRecord, ExperimentStatus, Orchestrator

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


def options(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The named options as given (None where not given)."""
    return {name: getattr(args, name) for name in names}


def set_values(args: argparse.Namespace) -> dict[str, str]:
    """The ``--set KEY=VALUE`` options."""
    values = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write it as KEY=VALUE, e.g. --set max-steps=5")
        values[key.strip()] = value
    return values


def load_settings(
    args: argparse.Namespace, run_values: Mapping[str, Any] | None = None, data_values: Mapping[str, Any] | None = None
) -> Settings:
    """The three configurations from defaults < --env-file < environment < options < ``*_values``, validated."""
    env_file = args.env_file or ENV_FILE
    check_env_file(env_file, given=args.env_file is not None)
    settings = Settings(
        run=RunConfig.from_env(
            env_file, overrides={**options(args, RUN_OPTIONS), **set_values(args), **(run_values or {})}
        ),
        data=DataConfig.from_env(env_file, overrides={**options(args, DATA_OPTIONS), **(data_values or {})}),
        experiment=ExperimentConfig.from_env(env_file, overrides=options(args, EXPERIMENT_OPTIONS)),
    )
    check_clients_fit(settings.run, settings.data.num_partitions)
    return settings


def note_ignored_on_resume(args: argparse.Namespace, path: Path, also: tuple[str, ...] = ()) -> None:
    """Name the run, data and experiment options given with ``--resume``: the recorded ones count."""
    given = [
        f"--{n.replace('_', '-')}"
        for n in (*RUN_OPTIONS, *DATA_OPTIONS, "backend", "repeats", *also)
        if getattr(args, n) not in (None, [])
    ]
    given += ["--set"] * bool(args.settings)
    if given:
        console.print(
            f"notice: --resume takes every setting from {path}; ignoring {', '.join(given)} "
            "(only --retries, --on-failure, --metrics-port and --monitoring apply to a resumed experiment)"
        )


def refuse_if_running(what: str, status: ExperimentStatus | None, owner: Orchestrator | None) -> None:
    """ConfigError if ``what`` is marked running by an orchestrator that is still alive on this host."""
    alive = owner is not None and owner.host == socket.gethostname() and runs_one_of(owner.pid, (b"orchestrate",))
    if status == ExperimentStatus.RUNNING and alive:
        assert owner is not None
        raise ConfigError(
            f"--resume: {what} is still being run by process {owner.pid}; wait for it, or stop it (Ctrl-C) and "
            "resume then"
        )


def recorded_settings(record: ExperimentRecord, args: argparse.Namespace) -> Settings:
    """An experiment's recorded settings, with the resumable options given on top."""
    recorded = dict(record.experiment)
    recorded.update({k.replace("_", "-"): v for k, v in options(args, RESUMABLE_OPTIONS).items() if v is not None})
    return Settings(
        run=RunConfig.from_mapping(record.config),
        data=DataConfig.from_mapping(record.data),
        experiment=ExperimentConfig.from_mapping(recorded),
    )


def interrupt_on_sigterm() -> None:
    """SIGTERM (e.g. docker stop, a CI timeout) tears down like Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
