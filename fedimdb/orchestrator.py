"""``python orchestrate.py``: validate, prepare the shards, run the federation, collect and verify.

Every invocation makes a new experiment folder ``OUT/<experiment-id>/`` and never
touches an earlier one::

    experiment.json     configuration, seeds, versions, per-repeat status and timings
    repeat-0/           the run's artifact set (run.json, rounds.csv, clients.csv, weights/)
    repeat-0/logs/      SuperLink, SuperNode and ServerApp logs
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from fedimdb.artifacts import ArtifactError, utc_now, write_json_atomic
from fedimdb.config import MODEL_PRESETS, STRATEGIES, ConfigError, DataConfig, RunConfig, check_clients_fit
from fedimdb.data import ShardError, prepare_shards, verify_shards
from fedimdb.deploy import flwr_cli
from fedimdb.deploy.local import LocalFederation

CONNECTION = "fedimdb-local"
FLOWER_COMMANDS = ("flwr", "flower-superlink", "flower-supernode")
console = Console(stderr=True, soft_wrap=True, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    """Options override .env / FEDIMDB_* values, which override the defaults in fedimdb/config.py."""
    p = argparse.ArgumentParser(
        prog="orchestrate.py",
        description="Run a federated IMDB experiment on a real Flower deployment and collect its artifacts.",
    )
    p.add_argument("--backend", choices=("local",), default="local",
                   help="local: SuperLink and SuperNodes as processes on this machine, gRPC on loopback")
    p.add_argument("--rounds", dest="num_rounds", type=int, help="federated rounds (FEDIMDB_NUM_ROUNDS)")
    p.add_argument("--clients", dest="num_clients", type=int, help="clients / SuperNodes (FEDIMDB_NUM_CLIENTS)")
    p.add_argument("--model", help=f"preset {'|'.join(MODEL_PRESETS)}, local directory or hub id (FEDIMDB_MODEL)")
    p.add_argument("--strategy", choices=STRATEGIES, help="aggregation strategy (FEDIMDB_STRATEGY)")
    p.add_argument("--seed", type=int, help="base seed (FEDIMDB_SEED)")
    p.add_argument("--data-source", help="hub id or local folder of train/test Parquet (FEDIMDB_DATA_SOURCE)")
    p.add_argument("--partitioner", choices=("iid", "dirichlet"), help="FEDIMDB_PARTITIONER")
    p.add_argument("--alpha", type=float, help="Dirichlet concentration (FEDIMDB_ALPHA)")
    p.add_argument("--data-dir", help="where shards are prepared / reused (FEDIMDB_DATA_DIR)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run setting, e.g. --set max-steps=5 (repeatable)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results root (default: results)")
    p.add_argument("--env-file", type=Path, default=Path(".env"), help="settings file (default: .env)")
    return p


def load_configs(args: argparse.Namespace) -> tuple[RunConfig, DataConfig]:
    """Both configurations, validated; data-dir is shared by the two."""
    overrides: dict[str, Any] = {k: getattr(args, k) for k in ("num_rounds", "num_clients", "model", "strategy",
                                                               "seed", "data_dir")}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: write it as KEY=VALUE, e.g. --set max-steps=5")
        overrides[key.strip()] = value
    data_overrides = {k: getattr(args, k) for k in ("data_source", "partitioner", "alpha", "data_dir")}
    data_cfg = DataConfig.from_env(args.env_file, overrides=data_overrides)
    run_cfg = RunConfig.from_env(args.env_file, overrides={**overrides, "data_dir": data_cfg.data_dir})
    check_clients_fit(run_cfg, data_cfg.num_partitions)
    return run_cfg, data_cfg


def new_experiment_dir(out: Path, cfg: RunConfig) -> Path:
    """A fresh, never reused folder: UTC time, model, strategy and a random suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{Path(cfg.model).name}-{cfg.strategy}-{secrets.token_hex(2)}"
    path = out / name
    path.mkdir(parents=True, exist_ok=False)
    return path


def process_env(cfg: RunConfig, flwr_home: Path) -> dict[str, str]:
    """Environment of every Flower process: own FLWR_HOME, no telemetry, threads shared fairly."""
    threads = cfg.torch_threads or max(1, (os.cpu_count() or 1) // cfg.num_clients)
    return {"FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}


def run_local(cfg: RunConfig, shards: Path, run_dir: Path) -> dict[str, Any]:
    """One run on a LocalFederation; returns the final ``flwr ls`` entry of a verified run."""
    with tempfile.TemporaryDirectory(prefix="fedimdb-flwr-") as tmp:
        env = process_env(cfg, Path(tmp))
        with LocalFederation(shards, cfg.num_clients, run_dir / "logs", env) as fed:
            flwr_cli.write_connection(Path(tmp), CONNECTION, fed.control_address)
            console.print(f"{cfg.num_clients} SuperNodes connected over gRPC to the SuperLink at {fed.fleet_address}")
            run_config = {**cfg.as_dict(), "data-dir": str(shards.resolve()), "output-dir": str(run_dir.resolve())}
            return flwr_cli.run_to_completion(CONNECTION, run_config, env, log=console.print, check=fed.check_alive)


def main(argv: list[str] | None = None) -> int:
    """Entry point of orchestrate.py; exit 0 only for a completed, verified run."""
    args = build_parser().parse_args(argv)
    try:
        run_cfg, data_cfg = load_configs(args)
        missing = [c for c in FLOWER_COMMANDS if shutil.which(c) is None]
        if missing:
            raise ConfigError(f"backend local needs {', '.join(missing)} on PATH; install the project: pip install -e .")
        shards = prepare_shards(data_cfg, log=console.print)
        verify_shards(shards)
    except (ConfigError, ShardError) as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 2

    exp_dir = new_experiment_dir(args.out, run_cfg)
    run_dir = exp_dir / "repeat-0"
    record: dict[str, Any] = {"experiment-id": exp_dir.name, "backend": args.backend, "started": utc_now(),
                              "config": run_cfg.as_dict(), "data": data_cfg.as_dict(), "seeds": [run_cfg.seed],
                              "repeats": []}
    write_json_atomic(exp_dir / "experiment.json", record)
    console.print(f"experiment {exp_dir}")
    t0 = time.monotonic()
    repeat: dict[str, Any] = {"repeat": 0, "seed": run_cfg.seed, "dir": run_dir.name}
    try:
        entry = run_local(run_cfg, shards, run_dir)
        repeat.update(status="verified", flower_status=entry["status"])
    except (flwr_cli.FlowerRunError, ArtifactError, RuntimeError) as exc:
        repeat.update(status="failed", error=str(exc))
        console.print(f"repeat 0 failed: {exc}", style="red", markup=False)
    except KeyboardInterrupt:
        repeat.update(status="interrupted")
        raise
    finally:
        repeat["seconds"] = round(time.monotonic() - t0, 1)
        record["repeats"].append(repeat)
        record["ended"] = utc_now()
        write_json_atomic(exp_dir / "experiment.json", record)
    if repeat["status"] != "verified":
        return 1
    console.print(f"[green]done[/green] in {repeat['seconds']} s: artifacts verified in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
