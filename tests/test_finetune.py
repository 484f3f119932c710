"""What trains and travels (fedimdb/finetune.py): the whole model, all but the word embeddings, or LoRA adapters."""

from __future__ import annotations

import pytest
import torch

from fedimdb.config import FINE_TUNE_MODES, FULL_MODEL, LORA, NO_EMBEDDINGS
from fedimdb.finetune import Tuned
from fedimdb.model import load_model


def _tuned(mode: str, seed: int = 0) -> Tuned:
    model, _ = load_model("tiny", seed)
    return Tuned(model, mode, lora_rank=4)


def _base_keys() -> set[str]:
    return set(load_model("tiny", 0)[0].state_dict())


def test_full_sends_the_whole_state_and_the_others_only_what_trains() -> None:
    assert set(_tuned(FULL_MODEL).travelling()) == _base_keys()
    no_emb = _tuned(NO_EMBEDDINGS)
    assert not any("word_embeddings" in k for k in no_emb.travelling())
    assert set(no_emb.travelling()) == {n for n, p in no_emb.model.named_parameters() if p.requires_grad}
    lora = _tuned(LORA).travelling()
    assert (
        any("lora_A" in k for k in lora) and any("classifier" in k for k in lora) and any("pooler" in k for k in lora)
    )
    assert not any("word_embeddings" in k or k.endswith("query.base_layer.weight") for k in lora)


@pytest.mark.parametrize("mode", FINE_TUNE_MODES)
def test_what_travels_loads_into_another_end_and_the_whole_model_follows(mode: str) -> None:
    """One end's trained tensors, loaded at another end that loaded the same model, give the same whole model."""
    trainer, receiver = _tuned(mode), _tuned(mode)
    with torch.no_grad():
        for p in trainer.trainable():
            p.add_(0.01 * torch.randn_like(p))
    receiver.load({k: v.clone() for k, v in trainer.travelling().items()})
    sent, got = trainer.whole(), receiver.whole()
    assert set(got) == _base_keys()
    assert all(torch.equal(sent[k], got[k]) for k in sent)
    receiver.load(_tuned(mode, seed=1).travelling())  # the next round's model: the snapshot stays as it was
    assert all(torch.equal(sent[k], got[k]) for k in sent)


def test_lora_merges_into_the_weights_an_archive_holds() -> None:
    """The whole model of a LoRA run is the base weight plus B @ A times the scale, in the base model's layout."""
    tuned = _tuned(LORA)
    base = load_model("tiny", 0)[0].state_dict()
    name = next(k for k in tuned.travelling() if k.endswith("query.lora_B.default.weight"))
    with torch.no_grad():
        dict(tuned.model.named_parameters())[name].fill_(0.5)  # B starts at zero: the merged model is the base
    whole = tuned.whole()
    layer = name.removeprefix("base_model.model.").removesuffix(".lora_B.default.weight")
    a = dict(tuned.model.named_parameters())[name.replace("lora_B", "lora_A")]
    delta = (torch.full((base[f"{layer}.weight"].shape[0], a.shape[0]), 0.5) @ a.detach()) * 2.0  # scale alpha/r = 2
    torch.testing.assert_close(whole[f"{layer}.weight"], base[f"{layer}.weight"] + delta)
    other = next(k for k in base if "key.weight" in k)
    assert torch.equal(whole[other], base[other])


def test_a_state_with_other_tensors_is_refused() -> None:
    tuned = _tuned(NO_EMBEDDINGS)
    state = tuned.travelling()
    state.pop(next(iter(state)))
    with pytest.raises(ValueError, match="tensors missing"):
        tuned.load(state)
