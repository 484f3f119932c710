"""IMDB loading and sharding with flwr-datasets partitioners, on the real data in ../shared."""

from __future__ import annotations

import hashlib
import itertools
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fedimdb.config import ConfigError, DataConfig
from fedimdb.data import ShardError, load_imdb, prepare_shards, read_split, verify_shards
from tests.conftest import write_parquet_dataset

pytestmark = pytest.mark.timeout(600)  # the shards fixture prepares all 50,000 reviews


def test_real_imdb_loads_through_load_dataset(imdb_dir: Path) -> None:
    ds = load_imdb(str(imdb_dir))
    assert (len(ds["train"]), len(ds["test"])) == (25_000, 25_000)
    assert set(ds["train"].column_names) >= {"text", "label"}


def _hashes(texts: list[str]) -> Counter[str]:
    return Counter(hashlib.sha256(t.encode()).hexdigest() for t in texts)


def test_ten_iid_shards_cover_the_train_split_once(shards: Path, imdb_dir: Path) -> None:
    manifest = verify_shards(shards)
    assert manifest["recipe"]["partitioner"] == "iid"
    per_shard = {}
    for pid in range(10):
        train, val = read_split(shards / f"client-{pid}", "train"), read_split(shards / f"client-{pid}", "val")
        assert len(train) == 2250 and len(val) == 250
        assert 0.4 < sum(train.labels) / len(train) < 0.6  # shuffled before sharding: both labels everywhere
        per_shard[pid] = _hashes(train.texts + val.texts)
    source = _hashes(load_imdb(str(imdb_dir))["train"]["text"])
    # Every review of the train split in exactly one shard: the same multiset of texts (IMDB
    # repeats some reviews, so a Counter, not a set), and no text shared by two shards unless
    # the source holds it more than once.
    in_shards = sum(per_shard.values(), Counter())
    assert in_shards == source, f"{(in_shards - source).total()} extra, {(source - in_shards).total()} missing reviews"
    for a, b in itertools.combinations(per_shard, 2):
        shared = [h for h in per_shard[a].keys() & per_shard[b].keys() if source[h] < 2]
        assert not shared, f"client-{a} and client-{b} share {len(shared)} reviews"
    assert len(read_split(shards / "server", "test")) == 25_000


def test_prepare_is_idempotent_and_never_overwrites(shards: Path, imdb_dir: Path) -> None:
    same = DataConfig(data_source=str(imdb_dir), shards_dir=str(shards))
    before = (shards / "client-0" / "train.parquet").stat().st_mtime_ns
    assert prepare_shards(same, log=lambda *_: None) == shards
    assert (shards / "client-0" / "train.parquet").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="already holds shards made with other settings"):
        prepare_shards(DataConfig(data_source=str(imdb_dir), shards_dir=str(shards), num_partitions=5))


def test_corrupt_or_missing_shard_is_detected(shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    table = pq.read_table(copy / "client-1" / "val.parquet").slice(0, 10)
    pq.write_table(table, copy / "client-1" / "val.parquet")
    with pytest.raises(ShardError, match=r"client-1/val\.parquet: sha256 does not match"):
        verify_shards(copy)
    (copy / "client-2" / "train.parquet").unlink()
    with pytest.raises(ShardError, match=r"client-2/train\.parquet: missing"):
        read_split(copy / "client-2", "train")


def test_dirichlet_partitioner_skews_labels(tmp_path: Path) -> None:
    source = write_parquet_dataset(tmp_path / "imdb", rows=2000)
    out = prepare_shards(
        DataConfig(
            data_source=str(source),
            shards_dir=str(tmp_path / "shards"),
            num_partitions=4,
            partitioner="dirichlet",
            alpha=0.1,
        ),
        log=lambda *_: None,
    )
    shares = [sum(s.labels) / len(s) for s in (read_split(out / f"client-{p}", "train") for p in range(4))]
    assert max(shares) - min(shares) > 0.3, shares
    assert verify_shards(out)["recipe"]["alpha"] == 0.1


def test_source_without_a_test_split_is_refused(tmp_path: Path) -> None:
    source = write_parquet_dataset(tmp_path / "imdb", rows=20)
    (source / "test.parquet").unlink()
    with pytest.raises(
        ConfigError, match=r"data-source: .*test.parquet is missing; the folder needs train.parquet and test.parquet"
    ):
        load_imdb(str(source))
