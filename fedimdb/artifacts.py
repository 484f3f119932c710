"""A run's artifacts: written atomically, hashed as written, verifiable later.

Layout of one run folder::

    run.json                      run id, seed, resolved config, versions, status, sha256 of every file
    run.json.sha256               sha256 of run.json itself (``sha256sum -c`` format)
    rounds.csv                    one row per round
    clients.csv                   one row per client per round
    weights/round-000.safetensors global weights before round 1, then after each round
    weights/model.safetensors     the final global model; with config.json and the
                                  tokenizer files beside it, weights/ loads with from_pretrained
    weights/clients/round-001-client-0.safetensors   (only with archive-client-weights)
    state/round-003.safetensors   the server's state after the last round (to continue from it;
                                  server/continuation.py): only the latest round's is kept
    logs/                         the deployment's logs (not hashed: written around the run)

run.json's keys are kebab-case, like Flower's run config and ``flwr ls``; its model: fedimdb/run_record.py.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from fedimdb.config import MINILM_PACKAGE
from fedimdb.run_record import RunRecord, RunStatus

RUN_FILE = "run.json"
RUN_HASH_FILE = RUN_FILE + ".sha256"  # protects run.json, which lists every other file's hash
ROUNDS_FILE = "rounds.csv"
CLIENTS_FILE = "clients.csv"
WEIGHT_STATS_FILE = "weight_stats.csv"  # fedimdb/weights.py: per round, tensor, layer group and model
CLIENT_UPDATES_FILE = "client_updates.csv"  # ... and per round and client
WEIGHTS_DIR = "weights"
FINAL_WEIGHTS = "model.safetensors"
STATE_DIR = "state"
LOGS_DIR = "logs"


class ArtifactError(RuntimeError):
    """An artifact folder is incomplete or a file does not match its recorded hash."""


def software_versions() -> dict[str, str]:
    """Versions that decide whether a run can be reproduced."""
    import platform

    import datasets
    import flwr
    import torch
    import transformers

    import fedimdb

    versions = {
        "fedimdb": fedimdb.__version__,
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }
    with contextlib.suppress(metadata.PackageNotFoundError):  # the minilm preset's weights
        versions[MINILM_PACKAGE] = metadata.version(MINILM_PACKAGE)
    return versions


def utc_now() -> str:
    """ISO 8601 timestamp in UTC, second precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> str:
    """Write via a temporary file in the same folder and rename; return the sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; other containers' users must read shards and artifacts
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_bytes(data)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomic(path: Path, obj: Any) -> str:
    return write_bytes_atomic(path, json_bytes(obj))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def csv_bytes(columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Rows as CSV; floats keep full precision so reruns compare exactly."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue().encode()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def round_weights_name(server_round: int) -> str:
    return f"{WEIGHTS_DIR}/round-{server_round:03d}.safetensors"


def client_weights_name(server_round: int, partition_id: int) -> str:
    return f"{WEIGHTS_DIR}/clients/round-{server_round:03d}-client-{partition_id}.safetensors"


def server_state_name(server_round: int) -> str:
    return f"{STATE_DIR}/round-{server_round:03d}.safetensors"


class RunArtifacts:
    """Writes one run's folder; every file's sha256 lands in run.json (``record``, a RunRecord).

    run.json is rewritten by :meth:`save` (after each round), so a crashed run still says how far it
    got. An existing run.json is never overwritten: each run needs a fresh folder.

    A process killed between any two file operations leaves a folder that verifies: run.json never
    lists only a hash its file no longer has. A file it lists is rewritten only after run.json holds
    the new hash beside the old one (``replaced``), is removed only after run.json has dropped it, and
    the sidecar lists run.json's old and new hash while run.json itself is replaced.
    """

    def __init__(self, folder: Path, record: RunRecord) -> None:
        self.folder = Path(folder)
        if (self.folder / RUN_FILE).exists():
            raise ArtifactError(f"{self.folder} already holds a run ({RUN_FILE}); give each run a new output-dir")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.record = record
        self.saved: str | None = None  # run.json's sha256 as on disk
        self.save()

    def write(self, name: str, data: bytes) -> None:
        """Write one file (relative name) atomically and record its hash; a file run.json lists with other
        content is rewritten after run.json is saved with both hashes."""
        digest, listed = sha256_bytes(data), self.record.files.get(name)
        if listed is not None and listed != digest:
            self.record.replaced[name], self.record.files[name] = listed, digest
            self.save()
        self.record.files[name] = write_bytes_atomic(self.folder / name, data)

    def write_csv(self, name: str, columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> None:
        self.write(name, csv_bytes(columns, rows))

    def write_weights(self, name: str, state_dict: Mapping[str, Any]) -> None:
        """Store a torch state dict as safetensors."""
        from safetensors.torch import save

        self.write(name, save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}))

    def remove(self, name: str) -> None:
        """Delete a file this run wrote (a superseded state file) once run.json is saved without it."""
        if self.record.files.pop(name, None) is not None:
            self.save()
        (self.folder / name).unlink(missing_ok=True)

    def carry(self, source: Path, names: Iterable[str]) -> None:
        """Copy files of another (verified) run folder under the same names, hashed again as written."""
        for name in names:
            self.write(name, (Path(source) / name).read_bytes())

    def add_folder(self, source: Path, into: str) -> None:
        """Copy every file of ``source`` (e.g. a saved tokenizer) under ``into``."""
        for path in sorted(Path(source).rglob("*")):
            if path.is_file():
                self.write(f"{into}/{path.relative_to(source)}", path.read_bytes())

    def finish(self, status: RunStatus, error: str | None = None) -> None:
        """Final run.json: status completed or failed."""
        self.record.status, self.record.error, self.record.ended = status, error, utc_now()
        self.save()

    def save(self) -> None:
        """Rewrite run.json (files in name order) and its sidecar hash; the sidecar lists the old hash too
        until run.json is replaced. The files rewritten before now are done: ``replaced`` empties after."""
        self.record.files = dict(sorted(self.record.files.items()))
        data = json_bytes(self.record.to_json())
        digest = sha256_bytes(data)
        if self.saved is not None and self.saved != digest:
            self._write_sidecar(digest, self.saved)
        write_bytes_atomic(self.folder / RUN_FILE, data)
        self._write_sidecar(digest)
        self.saved = digest
        self.record.replaced = {}

    def _write_sidecar(self, *digests: str) -> None:
        lines = "".join(f"{d}  {RUN_FILE}\n" for d in digests)
        write_bytes_atomic(self.folder / RUN_HASH_FILE, lines.encode())


def continuable_round(record: RunRecord) -> int:
    """The last round a failed run can be continued after (server/continuation.py); 0 when it archived no round's state."""
    r = record.rounds_completed
    return r if r > 0 and {server_state_name(r), round_weights_name(r)} <= set(record.files) else 0


def verify_run(folder: Path, require_completed: bool = True) -> RunRecord:
    """Check run.json against its sidecar hash, read it (typed), then check every hash it lists. Raises ArtifactError."""
    folder = Path(folder)
    try:
        raw = (folder / RUN_FILE).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{folder}: no readable {RUN_FILE} ({exc})") from exc
    try:
        recorded = {line.split()[0] for line in (folder / RUN_HASH_FILE).read_text().splitlines() if line.strip()}
    except OSError:
        recorded = set()
    if not recorded:
        raise ArtifactError(f"{folder}: {RUN_HASH_FILE}: missing; {RUN_FILE} cannot be checked")
    if sha256_bytes(raw) not in recorded:
        raise ArtifactError(f"{folder}: {RUN_FILE}: sha256 mismatch (against {RUN_HASH_FILE})")
    try:
        record = RunRecord.from_json(json.loads(raw))
    except ValueError as exc:
        raise ArtifactError(f"{folder}: {RUN_FILE} is not a run record: {exc}") from exc
    if require_completed and record.status != RunStatus.COMPLETED:
        raise ArtifactError(f"{folder}: run status is {record.status!r}: {record.error}")
    problems = []
    for name, digest in record.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) not in {digest, record.replaced.get(name)}:
            problems.append(f"{name}: sha256 mismatch")
    for required in (ROUNDS_FILE, CLIENTS_FILE, f"{WEIGHTS_DIR}/{FINAL_WEIGHTS}") if require_completed else ():
        if required not in record.files:
            problems.append(f"{required}: not recorded in {RUN_FILE}")
    if problems:
        raise ArtifactError(f"{folder}: " + "; ".join(problems))
    return record
