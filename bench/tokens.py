"""Tokenise once: one round's batches from the tokenizer against the same batches from the token cache.

One client's round of the main job: 16 training batches of 16 reviews drawn from its 2,250-review
train split and its 250 validation reviews in batches of 16, at length 128. Before: the
tokenizer runs on every batch (what the loops did). After: the split's token ids come from the
cache (``fedimdb.tokens``: the cache key hashes every text, then one ``.npz`` load) and each batch
is collated from them. Both sides are timed in the same process, alternately. Run from the
repository root::

    python -m bench.tokens
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import DEFAULT_IMDB, write_result
from fedimdb import tokens
from fedimdb.config import DataConfig
from fedimdb.data import Examples, client_dir_name, prepare_shards, read_split
from fedimdb.model import load_model

CPU = torch.device("cpu")


Work = list[tuple[Examples, list[list[int]]]]
"""One round's splits, each with the row indices of its batches."""


def round_work(train: Examples, val: Examples, steps: int) -> Work:
    """The first ``steps`` batches of 16 of the shuffled train split; the validation split in batches of 16."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    return [
        (train, [order[i : i + 16] for i in range(0, steps * 16, 16)]),
        (val, [list(range(i, min(i + 16, len(val)))) for i in range(0, len(val), 16)]),
    ]


def before(tokenizer: Any, work: Work, max_length: int) -> None:
    """The tokenizer on every batch."""
    for split, idx_list in work:
        for idx in idx_list:
            texts = [split.texts[i] for i in idx]
            tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def after(tokenizer: Any, work: Work, max_length: int) -> None:
    """Token ids from the cache (a hit), each batch collated from them."""
    for split, idx_list in work:
        ids = tokens.tokenised(tokenizer, split, max_length)
        for idx in idx_list:
            tokens.collate(tokenizer, ids, idx, CPU)


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Alternate the two sides ``--repeats`` times; medians and their ratio; bench/results/tokens-*.json."""
    p = argparse.ArgumentParser(prog="python -m bench.tokens", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-source", type=Path, default=DEFAULT_IMDB)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    _, tokenizer = load_model("minilm", 0)
    with tempfile.TemporaryDirectory(prefix="fedimdb-bench-tokens-") as tmp:
        shards = prepare_shards(DataConfig(data_source=str(a.data_source), shards_dir=f"{tmp}/shards"), log=print)
        train, val = (read_split(shards / client_dir_name(0), s) for s in ("train", "val"))
        os.environ[tokens.CACHE_VAR] = f"{tmp}/cache"  # a fresh cache, this process only
        work = round_work(train, val, a.steps)
        after(tokenizer, work, a.max_length)  # fills the cache: every later call is a hit
        sides = {"before": before, "after": after}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(a.repeats):
            for name, fn in sides.items():
                times[name].append(timed(lambda fn=fn: fn(tokenizer, work, a.max_length)))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["after"] / medians["before"]
    print(
        f"one client's round (train {a.steps} x 16, val {len(val)}, length {a.max_length}): tokenizer per batch "
        f"{medians['before']:.3f} s, token cache {medians['after']:.3f} s; after / before = {ratio:.3f}"
    )
    figures = {
        "steps": a.steps,
        "max_length": a.max_length,
        "train_rows": len(train),
        "val_rows": len(val),
        "seconds": times,
        "median_seconds": medians,
        "ratio": ratio,
    }
    print(f"written: {write_result('tokens', figures, sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
