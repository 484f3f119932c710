"""Checks made before any stack starts, of what would fail the same way on every attempt.

``orchestrate.py`` runs these after validating the settings and before preparing shards or
starting anything: a failure is a :class:`~fedimdb.config.ConfigError` (one line naming the fix,
exit 2), never a retried attempt. What cannot be known from here (a client that dies, a slow
machine) is the run's business.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from pathlib import Path

from fedimdb.config import (
    DOCKER_BACKEND,
    HOST_BACKENDS,
    MODEL_PRESETS,
    SIMULATION_BACKEND,
    ConfigError,
    ExperimentConfig,
    RunConfig,
    Settings,
)
from fedimdb.privacy import check_budget

SPACE_MARGIN = 64 * 2**20
"""Bytes of one repeat besides its weights: logs, CSVs, plots, manifests."""
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def check_model(run: RunConfig, backend: str) -> int:
    """The model can be loaded where the run will load it; its weights' size in bytes (0: unknown).

    The local and simulation backends' ServerApp and ClientApps use this interpreter, so the model's
    config and tokenizer are loaded here. Compose images carry the presets; a host directory is not in them.
    """
    if run.model == "tiny":
        return 0  # built in code; ~170 KB, inside the margin
    from fedimdb.model import resolve_model_source  # imports torch: only for a real model

    local_dir = Path(run.model).expanduser().is_dir()
    if backend not in HOST_BACKENDS:
        if local_dir:
            raise ConfigError(
                f"model: {run.model!r} is a host directory, which the containers do not have; "
                "use --backend local, a preset or a hub id"
            )
        with contextlib.suppress(ConfigError):  # the images carry the presets; the host may not
            return _weight_bytes(Path(resolve_model_source(run.model))) if run.model in MODEL_PRESETS else 0
        return 0
    source = resolve_model_source(run.model)  # names the package a preset needs
    try:
        from transformers import AutoConfig, AutoTokenizer

        AutoConfig.from_pretrained(source)
        AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, … for what it cannot load
        where = "the directory" if local_dir else "the Hugging Face hub (is it reachable?)"
        raise ConfigError(
            f"model: {run.model!r} cannot be loaded from {where}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; fix it or use a preset ({', '.join(MODEL_PRESETS)})"
        ) from exc
    return _weight_bytes(Path(source)) if Path(source).is_dir() else 0


def _weight_bytes(folder: Path) -> int:
    weights = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        raise ConfigError(
            f"model: {folder} has no weights ({' or '.join(WEIGHT_SUFFIXES)} files); "
            "save the model there with save_pretrained, or use a preset"
        )
    return sum(p.stat().st_size for p in weights)


def check_device(run: RunConfig, backend: str) -> None:
    """``device=cuda`` needs a GPU here when the run trains here (Compose: the containers' GPUs)."""
    if backend in HOST_BACKENDS and run.device != "cpu":
        from fedimdb.model import pick_device

        pick_device(run.device)


def check_simulation(run: RunConfig, backend: str) -> None:
    """``warm-model`` starts a worker beside each SuperNode; the simulation backend has none (Ray's actors
    stay up across messages already)."""
    if backend == SIMULATION_BACKEND and run.warm_model:
        raise ConfigError(
            "warm-model: keeps a worker per SuperNode, and the simulation backend has none (Ray keeps its "
            "client processes up across messages); set warm-model = false, or use --backend local"
        )


def check_port(port: int, option: str) -> None:
    """Nothing listens on ``port`` (0: off, nothing to check)."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError as exc:
            raise ConfigError(
                f"{option}: port {port} is in use ({exc.strerror}); choose another, or 0 for none"
            ) from exc


def check_monitoring(experiment: ExperimentConfig, backend: str) -> None:
    """``monitoring`` runs Prometheus as a container scraping the orchestrator at the port its configuration names."""
    if not experiment.monitoring:
        return
    if backend != DOCKER_BACKEND:
        raise ConfigError(
            "--monitoring: runs Prometheus and Grafana as containers beside the docker backend's stacks; with the "
            "local backend run `prometheus --config.file=monitoring/prometheus/local.yml` yourself, or leave "
            "--monitoring out"
        )
    scraped = ExperimentConfig().metrics_port
    if experiment.metrics_port != scraped:
        raise ConfigError(
            f"--monitoring: Prometheus scrapes the orchestrator at port {scraped} (monitoring/prometheus/"
            f"prometheus.yml), not {experiment.metrics_port}; set --metrics-port {scraped}"
        )


def needed_bytes(settings: Settings, weight_bytes: int) -> int:
    """What the experiment writes under --out: every global model archived, client weights if asked."""
    run = settings.run
    copies = run.num_rounds + 2 + (run.num_rounds * run.num_clients if run.archive_client_weights else 0)
    return settings.experiment.repeats * (copies * weight_bytes + SPACE_MARGIN)


def check_out(out: Path, needed: int) -> None:
    """``out`` (or the folder it will be made in) is writable and has room for ``needed`` bytes."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"--out: {existing} is not writable ({exc.strerror}); choose another --out") from exc
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise ConfigError(
            f"--out: {existing} has {free / 2**20:.0f} MiB free and this experiment writes about "
            f"{needed / 2**20:.0f} MiB (its archived weights); free some space or choose another --out"
        )


def preflight(settings: Settings, backend: str, out: Path) -> None:
    """Every check above, cheapest first."""
    check_port(settings.experiment.metrics_port, "metrics-port")
    check_monitoring(settings.experiment, backend)
    check_simulation(settings.run, backend)
    check_budget(settings.run)
    check_device(settings.run, backend)
    check_out(out, needed_bytes(settings, check_model(settings.run, backend)))
