"""Submitting and following a run through the ``flwr`` CLI (Control API).

``flwr run --stream`` exits 0 even when the ServerApp fails, so the outcome is read
from ``flwr ls --format json``: status ``finished:completed`` or ``finished:failed``.

A loaded SuperLink can answer late or not at all for a while. Following a run tells "slow" from
"dead": a status call that gets no answer is retried, backing off, for up to
:data:`CONTROL_PATIENCE` seconds of silence; only then is the SuperLink given up for dead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tomli_w

from fedimdb.artifacts import (
    LOGS_DIR,
    ROUNDS_FILE,
    RUN_FILE,
    read_csv,
    write_json_atomic,
)
from fedimdb.config import APP_CONFIG, SECAGG_OFF
from fedimdb.deploy import APP_DIR, forkserver
from fedimdb.deploy.backend import StackError
from fedimdb.run_record import RunRecord, RunStatus, read_run_record
from fedimdb.waiting import patiently, wait_until

SERVERAPP_LOG = "serverapp.log"  # in the run folder's logs/
FLWR_RUN_FILE = "flwr-run.json"  # in logs/ too: the run's final ``flwr ls`` entry (bytes in/out, compute time)
FINISHED_PREFIX = "finished:"
FLOWER_COMPLETED = "finished:completed"  # a run's status in ``flwr ls`` when it ended well
CALL_TIMEOUT = 120.0  # seconds one flwr call may take
STATUS_SECONDS = 10.0  # between two ``flwr ls`` while a run goes on ...
WATCH_SECONDS = 1.0  # ... and between two looks at its run.json and its processes
CONTROL_PATIENCE = 600.0  # seconds the Control API may go unanswered before the SuperLink counts as dead
UNAVAILABLE = "is unavailable"  # flwr's words when it cannot reach the SuperLink ("Connection to the SuperLink ...")
KEY_IN_USE = "Public key already in use"  # flwr.common.constant.PUBLIC_KEY_ALREADY_IN_USE_MESSAGE (~0.9 s to import)


class FlowerRunError(StackError):
    """A run could not be submitted, failed, or did not finish in time."""


class ControlUnanswered(FlowerRunError):
    """A ``flwr`` call got no usable answer from the SuperLink's Control API (slow, busy, or down)."""


def write_connection(flwr_home: Path, name: str, address: str, root_certificates: Path | None = None) -> None:
    """The ``$FLWR_HOME/config.toml`` entry that ``flwr run NAME`` connects with: plaintext, or TLS trusting a CA."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = {"root-certificates": str(root_certificates)} if root_certificates else {"insecure": True}
    config = {"superlink": {"default": name, name: {"address": address, **security}}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(config))


def register_nodes(connection: str, public_keys: list[Path], env: Mapping[str, str]) -> dict[Path, int]:
    """``flwr supernode register`` each SuperNode's public key (SuperNode authentication): the node id
    of each key registered now. A key the SuperLink knows already (one restarted on its database)
    stays the node it was and is left out."""

    def register(key: Path) -> tuple[Path, int | None]:
        try:
            return key, int(_flwr(["supernode", "register", str(key), connection], env)["node-id"])
        except FlowerRunError as exc:
            if KEY_IN_USE in str(exc):
                return key, None
            raise

    with ThreadPoolExecutor(max_workers=len(public_keys) or 1) as pool:
        return {key: node for key, node in pool.map(register, public_keys) if node is not None}


def unregister_node(connection: str, node_id: int, env: Mapping[str, str]) -> None:
    """``flwr supernode unregister``: the node is offline at once, and its pending messages fail."""
    _flwr(["supernode", "unregister", str(node_id), connection], env)


def online_nodes(connection: str, env: Mapping[str, str]) -> set[int]:
    """``flwr supernode list``: the ids of the nodes the SuperLink counts online."""
    nodes = _flwr(["supernode", "list", connection], env).get("nodes", [])
    return {int(n["node-id"]) for n in nodes if n.get("status") == "online"}


def _flwr(args: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    timeout = CALL_TIMEOUT
    try:
        proc = subprocess.run(
            ["flwr", *args, "--format", "json"],
            env=forkserver.cli_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ControlUnanswered(f"flwr {args[0]} got no answer within {timeout:.0f} s") from None
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise ControlUnanswered(
            f"flwr {args[0]} gave no JSON (exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-2000:]}"
        ) from None
    if not out.get("success", False):
        message = str(out.get("error-message", out))
        error = ControlUnanswered if UNAVAILABLE in message else FlowerRunError  # else the SuperLink answered "no"
        raise error(f"flwr {args[0]} failed: {message}")
    return out


def app_folder(app_dir: str) -> Path:
    """The Flower App an ``app-dir`` setting names: that folder, or fedimdb's own (:data:`APP_DIR`) if empty."""
    return Path(app_dir).expanduser().resolve() if app_dir else APP_DIR


def stage_app(app_dir: Path, dest: Path) -> Path:
    """Copy into ``dest`` only what the app's FAB holds: pyproject.toml and its ``fab-include`` files.

    ``flwr run`` lists every file under the folder it is given before it filters them; in a checkout
    that is the virtual environment, the wheelhouse and the data too (~50,000 files: bench/submit.py).
    """
    pyproject = app_dir / APP_CONFIG
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pyproject, dest / APP_CONFIG)
    for pattern in tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["fab-include"]:
        for path in app_dir.glob(pattern):
            target = dest / path.relative_to(app_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def submit_run(
    app_dir: Path,
    connection: str,
    run_config: Mapping[str, Any],
    env: Mapping[str, str],
    workdir: Path,
    federation_config: Mapping[str, float] | None = None,
) -> int:
    """``flwr run``: build the app's FAB (from a staged copy in ``workdir``), submit it with these
    run-config overrides (and, to a simulating SuperLink, this federation config: ``num-supernodes``,
    ``client-resources-num-cpus`` ...); return the run id."""
    overrides_file = workdir / "run-config.toml"
    overrides_file.write_text(tomli_w.dumps(dict(run_config)))
    app = stage_app(app_dir, workdir / "app")
    args = ["run", str(app), connection, "--run-config", str(overrides_file)]
    if federation_config:
        args += ["--federation-config", " ".join(f"{k}={v}" for k, v in federation_config.items())]
    return int(_flwr(args, env)["run-id"])


def run_status(connection: str, run_id: int, env: Mapping[str, str]) -> dict[str, Any]:
    """The run's entry from ``flwr ls``: status, status-details, timestamps, traffic, compute time."""
    runs = _flwr(["ls", connection, "--run-id", str(run_id)], env)["runs"]
    if not runs:
        raise FlowerRunError(f"the SuperLink knows no run {run_id}")
    return runs[0]


def wait_for_run(
    connection: str,
    run_id: int,
    env: Mapping[str, str],
    timeout: float,
    poll_seconds: float = STATUS_SECONDS,
    on_poll: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
    patience: float = CONTROL_PATIENCE,
) -> dict[str, Any]:
    """Poll until the run is finished; return its final entry (completed or failed).

    The Control API is asked every ``poll_seconds`` (each ``flwr ls`` is a CLI process, ~1 s of CPU).
    In between, ``on_poll`` (cheap: restarts, progress) runs every :data:`WATCH_SECONDS`; when it
    returns True (the ServerApp has recorded its end) the Control API is asked at once. A status
    call without an answer is retried (:func:`~fedimdb.waiting.patiently`) until the
    Control API has been silent for ``patience`` seconds: then FlowerRunError (dead, not slow).
    """
    deadline = time.monotonic() + timeout

    def dead(silence: str) -> FlowerRunError:
        return FlowerRunError(f"{silence}: it is down or starved; see its log, and give the machine fewer clients")

    while True:
        entry = patiently(
            lambda: run_status(connection, run_id, env),
            retry_on=(ControlUnanswered,),
            what="the SuperLink's Control API",
            patience=patience,
            give_up=dead,
            log=log,
        )
        if str(entry["status"]).startswith(FINISHED_PREFIX):
            return entry
        if time.monotonic() > deadline:
            raise FlowerRunError(f"run {run_id} still {entry['status']} after {timeout:.0f} s")
        step = min(WATCH_SECONDS, poll_seconds)
        time.sleep(step)  # at least this long between two status calls, even when on_poll says ask now
        wait_until(lambda: on_poll is not None and on_poll(), poll_seconds - step, step)


def run_log(connection: str, run_id: int, env: Mapping[str, str]) -> str:
    """The ServerApp's log (``flwr log --show``), or why it could not be read."""
    try:
        proc = subprocess.run(
            ["flwr", "log", str(run_id), connection, "--show"],
            env=forkserver.cli_env(env),
            capture_output=True,
            text=True,
            timeout=CALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"(flwr log {run_id} got no answer within {CALL_TIMEOUT:.0f} s: the SuperLink is slow or down)\n"
    return proc.stdout + proc.stderr


def run_record(run_dir: Path) -> RunRecord | None:
    """The ServerApp's run.json as it stands (None before it is written): rounds completed, status."""
    try:
        return read_run_record(run_dir / RUN_FILE)
    except (OSError, ValueError):
        return None


class RoundProgress:
    """Turns readings of "rounds completed so far" into one ``on_round`` call per newly completed round."""

    def __init__(self, on_round: Callable[[int], None]) -> None:
        self.on_round = on_round
        self.last = 0

    def update(self, done: int) -> None:
        """Report ``done`` if it is more than was last reported."""
        if done > self.last:
            self.last = done
            self.on_round(done)


def round_line(run_dir: Path, done: int, num_rounds: int) -> str:
    """A completed round as the log tells it: its clients, central accuracy, epsilon spent (differential privacy)
    and seconds (from rounds.csv)."""
    path = run_dir / ROUNDS_FILE
    rows = [r for r in read_csv(path) if r["round"] == str(done)] if path.is_file() else []
    if not rows:
        return f"round {done}/{num_rounds} done"
    row = rows[-1]
    accuracy = f", central accuracy {float(row['central_accuracy']):.4f}" if row["central_accuracy"] else ""
    epsilon = f", epsilon spent {float(row['epsilon']):.3f}" if row.get("epsilon") else ""
    return (
        f"round {done}/{num_rounds}: {row['clients_participating']} of {row['clients_sampled']} clients aggregated "
        f"({row['clients_failed']} failed, {row['clients_refused']} refused){accuracy}{epsilon}, "
        f"{float(row['round_seconds']):.1f} s"
    )


def run_to_completion(
    connection: str,
    run_config: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    log: Callable[[str], None],
    check: Callable[[], None] | None = None,
    on_round: Callable[[int], None] | None = None,
    app_dir: Path = APP_DIR,
    federation_config: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Submit the app (``app_dir``: fedimdb's own unless told), follow it round by round, save the ServerApp log.

    ``run_config`` must hold ``output-dir`` (where the ServerApp writes, readable from here).
    Progress comes from the ServerApp's run.json (``rounds-completed``). Returns the final
    ``flwr ls`` entry; raises FlowerRunError if the run did not complete. Verifying the artifacts
    is the caller's (once, where they end up: the experiment loop, or the Compose runner).
    """
    run_dir = Path(run_config["output-dir"])
    num_rounds = int(run_config["num-rounds"])
    with tempfile.TemporaryDirectory(prefix="fedimdb-submit-") as tmp:
        run_id = submit_run(app_dir, connection, run_config, env, Path(tmp), federation_config)
    secure = run_config.get("secure-aggregation", SECAGG_OFF)
    log(
        f"run {run_id} submitted: {num_rounds} rounds of {run_config['strategy']} on model {run_config['model']}, "
        f"{run_config['num-clients']} clients{'' if secure == SECAGG_OFF else f', aggregated with {secure}'}; "
        f"artifacts go to {run_dir}"
    )

    def report(done: int) -> None:
        log(f"  {round_line(run_dir, done, num_rounds)}")
        if on_round is not None:
            on_round(done)

    progress = RoundProgress(report)

    def on_poll() -> bool:
        if check is not None:
            check()
        record = run_record(run_dir)
        progress.update(record.rounds_completed if record else 0)
        return record is not None and record.status != RunStatus.RUNNING

    server_log = run_dir / LOGS_DIR / SERVERAPP_LOG
    try:
        timeout = float(run_config["round-timeout"]) * (num_rounds + 1)
        entry = wait_for_run(connection, run_id, env, timeout=timeout, on_poll=on_poll, log=log)
    finally:
        server_log.parent.mkdir(parents=True, exist_ok=True)
        server_log.write_text(run_log(connection, run_id, env))
    write_json_atomic(server_log.parent / FLWR_RUN_FILE, entry)
    if entry["status"] != FLOWER_COMPLETED:
        raise FlowerRunError(f"run {run_id} ended {entry['status']}: {entry.get('status-details')}; see {server_log}")
    return entry
