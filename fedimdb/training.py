"""Local training and evaluation loops, shared by the ClientApp and the server's central evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from fedimdb.data import Examples
from fedimdb.tokens import collate, tokenised

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

COSINE_FLOOR = 0.1  # the cosine schedule ends at this share of the base learning rate


@dataclass(frozen=True)
class TrainResult:
    loss: float
    num_examples: int
    steps: int
    seconds: float

    @property
    def samples_per_second(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int

    def as_dict(self) -> dict[str, float | int]:
        """loss, accuracy and examples, as run.json records an evaluation."""
        return {"loss": self.loss, "accuracy": self.accuracy, "examples": self.num_examples}


def seed_everything(seed: int, threads: int = 0) -> None:
    """Same seed, same numbers on CPU: seed torch and make its kernels deterministic."""
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _batches(
    tokenizer: PreTrainedTokenizerBase,
    data: Examples,
    order: list[int],
    batch_size: int,
    max_length: int,
    device: torch.device,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    split = tokenised(tokenizer, data, max_length)  # once per split, cached on disk
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield collate(tokenizer, split, idx, device), torch.from_numpy(split.labels[idx]).to(device)


def _step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    micro: int,
    anchor: list[torch.Tensor] | None,
    proximal_mu: float,
) -> float:
    """One optimizer step over a batch, in passes of at most ``micro`` rows; the batch's mean loss.

    Each pass's mean loss is weighted by its share of the batch, so the accumulated gradient is the
    whole batch's: the same update in less memory (activations scale with the rows per pass).
    """
    optimizer.zero_grad()
    total = len(labels)
    loss_sum = 0.0
    for start in range(0, total, micro):
        part = slice(start, start + micro)
        loss = model(**{k: v[part] for k, v in inputs.items()}, labels=labels[part]).loss * (len(labels[part]) / total)
        loss.backward()
        loss_sum += loss.item()
    if anchor is not None:  # FedProx: mu/2 * ||w - w_global||^2, once per step
        distance = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
        prox = 0.5 * proximal_mu * cast(torch.Tensor, distance)  # a sum of tensors
        prox.backward()
        loss_sum += prox.item()
    optimizer.step()
    return loss_sum


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: Examples,
    *,
    epochs: int,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    seed: int,
    device: torch.device,
    micro_batch_size: int = 0,
    proximal_mu: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
) -> TrainResult:
    """AdamW over ``epochs`` shuffled passes, stopping early after ``max_steps`` (0 = no cap).

    Each batch of ``batch_size`` rows is one optimizer step, computed in passes of at most
    ``micro_batch_size`` rows (0 = the whole batch). With ``proximal_mu`` > 0 the FedProx term
    mu/2 * ||w - w_global||^2 is added to the loss. ``optimizer`` continues an optimizer over the
    model's parameters, its state and all (None: a fresh AdamW at ``learning_rate``).
    """
    model.to(device).train()
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    micro = micro_batch_size or batch_size
    steps, seen, loss_sum = 0, 0, 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator).tolist()
        for inputs, labels in _batches(tokenizer, data, order, batch_size, max_length, device):
            loss_sum += _step(model, optimizer, inputs, labels, micro, anchor, proximal_mu) * len(labels)
            steps += 1
            seen += len(labels)
            if max_steps and steps >= max_steps:
                break
        if max_steps and steps >= max_steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return TrainResult(
        loss=loss_sum / max(seen, 1), num_examples=seen, steps=steps, seconds=time.perf_counter() - start
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: Examples,
    *,
    batch_size: int,
    max_length: int,
    device: torch.device,
) -> EvalResult:
    """Mean cross-entropy and accuracy over all of ``data``, in file order."""
    model.to(device).eval()
    loss_sum, correct = 0.0, 0
    for inputs, labels in _batches(tokenizer, data, list(range(len(data))), batch_size, max_length, device):
        out = model(**inputs, labels=labels)
        loss_sum += out.loss.item() * len(labels)
        correct += int((out.logits.argmax(dim=-1) == labels).sum())
    n = max(len(data), 1)
    return EvalResult(loss=loss_sum / n, accuracy=correct / n, num_examples=len(data))


def scheduled_learning_rate(base: float, schedule: str, server_round: int, num_rounds: int) -> float:
    """The client learning rate of round ``server_round`` (1-based) of ``num_rounds``.

    ``constant``: ``base`` every round. ``cosine``: ``base`` in round 1, falling along half a
    cosine to ``base / 10`` in the last round.
    """
    if schedule == "constant" or num_rounds <= 1:
        return base
    progress = min(max(server_round - 1, 0), num_rounds - 1) / (num_rounds - 1)
    return base * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load global weights strictly: every key must match the local architecture."""
    model.load_state_dict(dict(state), strict=True)


def update_norm(new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``new - old`` over the floating-point tensors (integer buffers do not train)."""
    squares = [(new[k].double() - old[k].double()).square().sum() for k in new if new[k].is_floating_point()]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0
