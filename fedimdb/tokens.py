"""Tokenise once: a split's token ids, cached on disk by tokenizer, max-length and texts.

The training and evaluation loops used to run the tokenizer on every batch of every round. Now
each split is tokenised once per (tokenizer, max-length, texts) and kept in ``FEDIMDB_CACHE_DIR``
(default ``~/.cache/fedimdb``) as one ``.npz`` file written atomically; a later round, a later
message process or a later repeat on the same machine loads it. Batches are padded to their
longest row, exactly as the tokenizer pads them (tests/test_tokens.py checks the tensors match).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedimdb.data import Examples

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CACHE_VAR = "FEDIMDB_CACHE_DIR"
TOKENS_SUBDIR = "tokens"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TokenisedSplit:
    """Token ids of every row (truncated, not padded) and the labels, in file order."""

    ids: np.ndarray  # all rows' ids, concatenated (int32)
    offsets: np.ndarray  # row i is ids[offsets[i]:offsets[i + 1]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def row(self, i: int) -> np.ndarray:
        """Row ``i``'s token ids."""
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def cache_dir() -> Path:
    """Where tokenised splits are kept: ``$FEDIMDB_CACHE_DIR/tokens``."""
    root = os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "fedimdb"
    return Path(root) / TOKENS_SUBDIR


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What decides the ids: a fast tokenizer's definition, else its class, name and vocabulary size."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # minus the truncation and padding state that each call sets
        definition = json.loads(backend.to_str())
        return json.dumps({k: v for k, v in definition.items() if k not in ("truncation", "padding")}, sort_keys=True)
    return f"{type(tokenizer).__name__}:{tokenizer.name_or_path}:{len(tokenizer)}"


def cache_key(tokenizer: PreTrainedTokenizerBase, data: Examples, max_length: int) -> str:
    """sha256 over the tokenizer, max-length, texts and labels."""
    h = hashlib.sha256(tokenizer_fingerprint(tokenizer).encode())
    h.update(f"\0{max_length}\0".encode())
    for text in data.texts:
        h.update(text.encode())
        h.update(b"\0")
    h.update(np.asarray(data.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def tokenise(tokenizer: PreTrainedTokenizerBase, data: Examples, max_length: int) -> TokenisedSplit:
    """Run the tokenizer once over the split (truncation at ``max_length``, no padding)."""
    rows = tokenizer(data.texts, truncation=True, max_length=max_length)["input_ids"] if len(data) else []
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
    return TokenisedSplit(ids, offsets, np.asarray(data.labels, dtype=np.int64))


def tokenised(tokenizer: PreTrainedTokenizerBase, data: Examples, max_length: int) -> TokenisedSplit:
    """The split's token ids from the cache, tokenising and caching them on a miss."""
    folder = cache_dir()
    path = folder / f"{cache_key(tokenizer, data, max_length)}.npz"
    try:
        with np.load(path) as npz:
            return TokenisedSplit(npz["ids"], npz["offsets"], npz["labels"])
    except (OSError, KeyError, ValueError):
        pass  # a miss (or a damaged entry): tokenise and write it anew
    split = tokenise(tokenizer, data, max_length)
    try:
        _write(path, split)
    except OSError as exc:  # a read-only home: the run goes on, tokenising again next time
        warnings.warn(f"token cache not written ({exc}); set {CACHE_VAR} to a writable folder", stacklevel=2)
    return split


def _write(path: Path, split: TokenisedSplit) -> None:
    """One cache entry, atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, ids=split.ids, offsets=split.offsets, labels=split.labels)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def collate(
    tokenizer: PreTrainedTokenizerBase, split: TokenisedSplit, idx: list[int], device: torch.device
) -> dict[str, torch.Tensor]:
    """The model inputs of rows ``idx``, padded to the longest of them as the tokenizer pads."""
    rows = [split.row(i) for i in idx]
    width = max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), width), int(tokenizer.pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    left = tokenizer.padding_side == "left"
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        input_ids[i, cols] = torch.from_numpy(r.astype(np.int64))
        attention_mask[i, cols] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in tokenizer.model_input_names:
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    return {k: v.to(device) for k, v in inputs.items() if k in MODEL_INPUTS}
