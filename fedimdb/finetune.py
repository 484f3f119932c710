"""What a client trains, and so what travels: the whole model, all but the word embeddings, or LoRA adapters.

``fine-tune`` (run setting):

* ``full``: every tensor trains and travels, buffers included;
* ``no-embeddings``: the word embeddings (11.7 M of minilm's 22.7 M parameters) stay as loaded;
  every other parameter trains and travels;
* ``lora``: Hugging Face ``peft`` LoRA adapters of rank ``lora-rank`` on the attention projections
  (query, key, value), and the classification head (pooler and classifier) in full, train and
  travel; the rest stays as loaded.

Every end loads the same model (``load_model`` with the run's seed) and tunes it the same way,
so the frozen part is the same everywhere and never travels: the server keeps it. What an end
archives or evaluates is always the whole model (LoRA merged into its weights), whose state loads
into the model that ``from_pretrained`` builds from the run's ``weights/`` folder.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

import torch

from fedimdb.config import FULL_MODEL, LORA, NO_EMBEDDINGS

if TYPE_CHECKING:
    from peft import PeftModel

LORA_TARGETS = ("query", "key", "value")  # the attention projections of BERT-style models
HEAD_MODULES = ("classifier", "pooler")  # trained in full under LoRA
WORD_EMBEDDINGS = "word_embeddings"


class Tuned:
    """A model prepared for one fine-tuning mode: what trains, what travels, and the whole model.

    Parameters
    ----------
    model : torch.nn.Module
        A freshly loaded sequence-classification model (fedimdb.model.load_model).
    mode : str
        One of fedimdb.config's ``FINE_TUNE_MODES``.
    lora_rank : int, default 8
        The adapters' rank (``lora`` only); their scale ``lora_alpha / rank`` is 2.
    """

    def __init__(self, model: torch.nn.Module, mode: str, lora_rank: int = 8) -> None:
        self.mode = mode
        if mode == LORA:
            from peft import LoraConfig, TaskType, get_peft_model

            config = LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=lora_rank,
                lora_alpha=2 * lora_rank,
                lora_dropout=0.0,
                target_modules=list(LORA_TARGETS),
                modules_to_save=list(HEAD_MODULES),
            )
            model = get_peft_model(model, config)
        elif mode == NO_EMBEDDINGS:
            for name, param in model.named_parameters():
                if WORD_EMBEDDINGS in name:
                    param.requires_grad_(False)
        self.model = model

    def travelling(self) -> dict[str, torch.Tensor]:
        """The tensors that train, and so travel and are aggregated (``full``: the whole state); views, not copies."""
        if self.mode == FULL_MODEL:
            return dict(self.model.state_dict())
        return {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Put travelled tensors into the model: exactly the ones :meth:`travelling` names."""
        expected = set(self.travelling())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"fine-tune={self.mode}: tensors missing {missing[:3]}, unexpected {extra[:3]}")
        self.model.load_state_dict(dict(state), strict=self.mode == FULL_MODEL)

    def whole(self) -> dict[str, torch.Tensor]:
        """A copy of the whole model's state, LoRA merged in, under the base model's names."""
        if self.mode != LORA:
            return {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
        return dict(cast("PeftModel", copy.deepcopy(self.model)).merge_and_unload().state_dict())

    def trainable(self) -> list[torch.nn.Parameter]:
        """The parameters an optimizer updates."""
        return [p for p in self.model.parameters() if p.requires_grad]
