"""Tokenise once: cached token ids give exactly the batches the tokenizer itself would give."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedimdb.data import Examples, read_split
from fedimdb.model import load_model
from fedimdb.tokens import CACHE_VAR, cache_dir, collate, tokenise, tokenised

TEXTS = ["A fine film.", "Not good at all, the plot was thin and the acting worse than that.", "ok", ""]


@pytest.mark.parametrize("name", ["tiny", "minilm"])
def test_collated_batches_equal_the_tokenizers_own(name: str) -> None:
    _, tokenizer = load_model(name, 0)
    data = Examples(TEXTS, [1, 0, 1, 0])
    split = tokenise(tokenizer, data, max_length=8)
    for idx in ([0, 1, 2, 3], [2, 0], [3]):
        expected = tokenizer([TEXTS[i] for i in idx], truncation=True, max_length=8, padding=True, return_tensors="pt")
        got = collate(tokenizer, split, idx, torch.device("cpu"))
        assert set(got) == set(expected) & set(got) and got.keys() >= {"input_ids", "attention_mask"}
        for key, value in got.items():
            assert torch.equal(value, expected[key]), (name, idx, key)


def test_a_split_is_tokenised_once_and_then_read_from_the_cache(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_VAR, str(tmp_path))
    _, tokenizer = load_model("tiny", 0)
    data = read_split(shards / "client-0", "val").head(50)
    first = tokenised(tokenizer, data, 32)
    (entry,) = cache_dir().glob("*.npz")
    calls = []
    monkeypatch.setattr("fedimdb.tokens.tokenise", lambda *a: calls.append(a))
    again = tokenised(tokenizer, data, 32)
    assert not calls and (again.ids == first.ids).all() and (again.labels == first.labels).all()
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_VAR, str(tmp_path))
    tokenised(tokenizer, data, 16)  # another max-length is another entry
    assert len(list(cache_dir().glob("*.npz"))) == 2 and entry.exists()
