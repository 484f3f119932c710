"""IMDB shards: one folder per client plus the server's held-out set.

``python -m fedimdb.data prepare --source SRC --num-partitions 10 --out data/shards``

SRC is a Hugging Face dataset id (``stanfordnlp/imdb``) or a local folder with
``train.parquet`` and ``test.parquet``; both go through ``datasets.load_dataset``.
The train split is partitioned with a flwr-datasets partitioner; each partition is
split into the client's train and local validation sets. The test split, shuffled,
is the server's held-out set. Every folder gets a ``manifest.json`` with row counts,
label histogram and sha256 of its files. Re-running with the same settings verifies
and reuses the shards; different settings never overwrite them.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fedimdb.artifacts import read_json, sha256_bytes, sha256_file, write_json_atomic
from fedimdb.config import ENV_FILE, PARTITIONERS, ConfigError, DataConfig, check_env_file

MANIFEST = "manifest.json"
SERVER_DIR = "server"
STAGING_PREFIX = ".staging-"
IMDB_SPLITS = ("train", "test")
LABEL_NAMES = {0: "negative", 1: "positive"}  # IMDB's labels
SPLIT_FILES = {"train": "train.parquet", "val": "val.parquet", "test": "test.parquet"}


class ShardError(RuntimeError):
    """A shard folder is missing, unreadable or does not match its manifest."""


def client_dir_name(partition_id: int) -> str:
    """Folder of one client's shard, e.g. ``client-3``."""
    return f"client-{partition_id}"


def check_local_source(folder: Path) -> None:
    """Refuse a local IMDB folder that cannot make shards: read only the Parquet footers and labels."""
    for split in IMDB_SPLITS:
        path = folder / f"{split}.parquet"
        if not path.is_file():
            raise ConfigError(f"data-source: {path} is missing; the folder needs train.parquet and test.parquet")
        try:
            schema = pq.read_schema(path)
            labels = pq.read_table(path, columns=["label"]).column("label") if "label" in schema.names else None
        except (OSError, pa.ArrowException) as exc:
            raise ConfigError(f"data-source: {path} is not a readable Parquet file ({exc}); replace it") from exc
        problem = _source_problem(schema, labels)
        if problem:
            raise ConfigError(f"data-source: {path} {problem}")


def _source_problem(schema: pa.Schema, labels: pa.ChunkedArray | None) -> str | None:
    """What is wrong with one split's columns and labels, or None."""
    missing = [c for c in ("text", "label") if c not in schema.names]
    if missing:
        return f"has no column {' or '.join(missing)} (columns: {', '.join(schema.names)}); it needs text and label"
    if not pa.types.is_string(schema.field("text").type) and not pa.types.is_large_string(schema.field("text").type):
        return f"has text of type {schema.field('text').type}; text must be strings"
    if not pa.types.is_integer(schema.field("label").type):
        return f"has label of type {schema.field('label').type}; labels must be integers 0 (negative) and 1 (positive)"
    if labels is None or len(labels) == 0:
        return "has no rows; it needs labelled reviews"
    found = set(labels.unique().to_pylist())
    if found != set(LABEL_NAMES):
        return f"has labels {sorted(found, key=str)}; it needs both 0 (negative) and 1 (positive), and only those"
    return None


def load_imdb(source: str) -> Any:
    """Load IMDB's labelled train and test splits (hub id or local Parquet folder)."""
    import datasets  # here, not at the top: a ClientApp only reads its shard (datasets is the prepare extra)

    local = Path(source).expanduser()
    if local.is_dir():
        check_local_source(local)
    if local.is_dir():
        ds = datasets.load_dataset(str(local.resolve()))
    else:
        try:
            ds = datasets.load_dataset(source)
        except Exception as exc:  # any failure to fetch from the hub: offline, no such dataset, a proxy
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(
                f"data-source: {source!r} could not be loaded from the Hugging Face hub ({type(exc).__name__}: "
                f"{first[:300]}); check the network, or set FEDIMDB_DATA_SOURCE (--data-source) to a local folder "
                "with train.parquet and test.parquet"
            ) from None
    missing = set(IMDB_SPLITS) - set(ds.keys())
    if missing:
        raise ConfigError(f"data-source: {source!r} has no {sorted(missing)} split; it needs train and test")
    for split in IMDB_SPLITS:
        cols = set(ds[split].column_names)
        if not {"text", "label"} <= cols:
            raise ConfigError(
                f"data-source: split {split} of {source!r} needs columns text and label, has {sorted(cols)}"
            )
    return ds


def _partitioner(cfg: DataConfig) -> Any:
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if cfg.partitioner == "iid":
        return IidPartitioner(num_partitions=cfg.num_partitions)
    return DirichletPartitioner(
        num_partitions=cfg.num_partitions,
        partition_by="label",
        alpha=cfg.alpha,
        min_partition_size=10,
        self_balancing=True,
        shuffle=True,
        seed=cfg.data_seed,
    )


def _table(ds: Any) -> pa.Table:
    """The rows a (possibly index-mapped) Dataset really holds, as an Arrow table."""
    return ds.flatten_indices().data.table


def _write_split(table: pa.Table, path: Path) -> dict[str, Any]:
    pq.write_table(table, path)
    labels = Counter(int(x) for x in table.column("label").to_pylist())
    return {
        "rows": table.num_rows,
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "sha256": sha256_file(path),
    }


def _write_folder(folder: Path, splits: dict[str, pa.Table], meta: dict[str, Any]) -> dict[str, Any]:
    folder.mkdir(parents=True)
    files = {SPLIT_FILES[name]: _write_split(table, folder / SPLIT_FILES[name]) for name, table in splits.items()}
    manifest = {**meta, "files": files}
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def _recipe(cfg: DataConfig) -> dict[str, Any]:
    """The settings that determine the shards' content (the idempotence key)."""
    recipe = cfg.as_dict()
    recipe.pop("shards-dir")
    local = Path(cfg.data_source).expanduser()
    if local.is_dir():  # identified by content, so a folder mounted elsewhere (a container) still matches
        files = sorted(p for p in local.iterdir() if p.suffix == ".parquet")
        recipe["data-source"] = "local:" + sha256_bytes("".join(f"{p.name}:{sha256_file(p)}\n" for p in files).encode())
    if cfg.partitioner != "dirichlet":
        recipe.pop("alpha")
    return recipe


def prepare_shards(cfg: DataConfig, log: Any = print) -> Path:
    """Write (or verify and reuse) the shards described by ``cfg``; return their folder."""
    out = Path(cfg.shards_dir)
    recipe = _recipe(cfg)
    if (out / MANIFEST).exists():
        existing = read_json(out / MANIFEST)
        if existing.get("recipe") != recipe:
            raise ConfigError(
                f"shards-dir: {out} already holds shards made with other settings {existing.get('recipe')}; "
                "choose another folder (FEDIMDB_SHARDS_DIR, --shards-dir, or --out of fedimdb.data) or delete this one yourself"
            )
        verify_shards(out)
        log(f"shards at {out} already prepared with these settings: verified, reusing")
        return out
    import datasets

    datasets.disable_progress_bars()
    ds = load_imdb(cfg.data_source)  # a bad source is refused before anything is written
    _clear_unfinished(out)
    train = ds["train"].select_columns(["text", "label"]).shuffle(seed=cfg.data_seed).flatten_indices()
    test = ds["test"].select_columns(["text", "label"]).shuffle(seed=cfg.data_seed).flatten_indices()
    partitioner = _partitioner(cfg)
    partitioner.dataset = train

    # Staged inside ``out`` (which may be a mount point), moved into place, and committed by
    # writing the top-level manifest last: without it, the folder counts as unfinished.
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        shards = {}
        for pid in range(cfg.num_partitions):
            part = partitioner.load_partition(pid)
            if len(part) < 2:
                raise ConfigError(
                    f"num-partitions: partition {pid} has {len(part)} rows; use fewer partitions or a larger alpha"
                )
            split = part.train_test_split(test_size=cfg.val_fraction, seed=cfg.data_seed + pid)
            meta = {"partition-id": pid, "num-partitions": cfg.num_partitions, "recipe": recipe}
            shards[client_dir_name(pid)] = _write_folder(
                staging / client_dir_name(pid), {"train": _table(split["train"]), "val": _table(split["test"])}, meta
            )
        server = _write_folder(staging / SERVER_DIR, {"test": _table(test)}, {"recipe": recipe})
        summary = {
            name: {
                "rows": {f: v["rows"] for f, v in m["files"].items()},
                "manifest-sha256": sha256_file(staging / name / MANIFEST),
            }
            for name, m in {**shards, SERVER_DIR: server}.items()
        }
        for name in summary:
            (staging / name).rename(out / name)
        write_json_atomic(out / MANIFEST, {"recipe": recipe, "num-partitions": cfg.num_partitions, "folders": summary})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {cfg.num_partitions} client shards and the server's held-out set to {out}")
    return out


def _clear_unfinished(out: Path) -> None:
    """Make ``out`` an empty folder; only leftovers of an interrupted preparation are removed."""
    out.mkdir(parents=True, exist_ok=True)
    ours = re.compile(rf"^(client-\d+|{SERVER_DIR}|{re.escape(STAGING_PREFIX)}.*)$")
    foreign = [p.name for p in out.iterdir() if not ours.match(p.name)]
    if foreign:
        raise ConfigError(
            f"shards-dir: {out} is not empty and holds no prepared shards ({', '.join(sorted(foreign)[:5])}); "
            "choose an empty or new folder"
        )
    for leftover in out.iterdir():
        shutil.rmtree(leftover)


def verify_folder(folder: Path) -> dict[str, Any]:
    """Check one shard folder against its manifest; return the manifest."""
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, ValueError) as exc:
        raise ShardError(f"{folder}: cannot read {MANIFEST} ({exc}); re-run `python -m fedimdb.data prepare`") from exc
    for name, info in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ShardError(f"{path}: missing; re-run `python -m fedimdb.data prepare` into an empty folder")
        if sha256_file(path) != info["sha256"]:
            raise ShardError(
                f"{path}: sha256 does not match {folder / MANIFEST}; the shard is corrupt, prepare it again"
            )
    return manifest


def verify_shards(root: Path) -> dict[str, Any]:
    """Check the top-level manifest and every folder it lists; return it."""
    top = root / MANIFEST
    if not top.is_file():
        raise ShardError(f"{root}: no {MANIFEST}; prepare the data first: python -m fedimdb.data prepare --out {root}")
    manifest = read_json(top)
    for name, info in manifest["folders"].items():
        verify_folder(root / name)
        if sha256_file(root / name / MANIFEST) != info["manifest-sha256"]:
            raise ShardError(f"{root / name / MANIFEST}: changed since preparation; prepare the data again")
    return manifest


@dataclass(frozen=True)
class Examples:
    """Texts and labels of one split, in file order."""

    texts: list[str]
    labels: list[int]

    def head(self, rows: int) -> Examples:
        """The first ``rows`` examples (0 = all)."""
        return self if rows <= 0 else Examples(self.texts[:rows], self.labels[:rows])

    def __len__(self) -> int:
        return len(self.labels)


def read_split(folder: Path, split: str) -> Examples:
    """Read one split (train, val or test) of a shard folder, checked against its manifest."""
    manifest = verify_folder(folder)
    name = SPLIT_FILES[split]
    if name not in manifest["files"]:
        raise ShardError(f"{folder}: has no {split} split ({name})")
    table = pq.read_table(folder / name, columns=["text", "label"])
    return Examples(table.column("text").to_pylist(), [int(x) for x in table.column("label").to_pylist()])


def main(argv: list[str] | None = None) -> int:
    """``python -m fedimdb.data prepare ...``: options default to .env / FEDIMDB_* values."""
    parser = argparse.ArgumentParser(prog="python -m fedimdb.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write or verify the client shards and the server's held-out set")
    prep.add_argument("--source", dest="data_source", help="hub id (stanfordnlp/imdb) or local folder of Parquet files")
    prep.add_argument("--num-partitions", type=int)
    prep.add_argument("--partitioner", choices=PARTITIONERS)
    prep.add_argument("--alpha", type=float, help="Dirichlet concentration (partitioner dirichlet)")
    prep.add_argument("--val-fraction", type=float)
    prep.add_argument("--seed", dest="data_seed", type=int)
    prep.add_argument("--out", dest="shards_dir", help="output folder (default data/shards)")
    prep.add_argument("--env-file", type=Path, help=f"settings file (default {ENV_FILE})")
    args = vars(parser.parse_args(argv))
    given = args.pop("env_file")
    args.pop("command")
    try:
        check_env_file(given or ENV_FILE, given=given is not None)
        cfg = DataConfig.from_env(given or ENV_FILE, overrides=args)
        prepare_shards(cfg)
    except (ConfigError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
