"""8-bit quantisation of weight differences: pure tensor arithmetic, no I/O.

A tensor ``x`` is sent as one signed byte per element, ``q = round((x - low) / step) - 128``
with ``step = (max(x) - min(x)) / 255``, and comes back as ``low + (q + 128) * step``. Rounding
is to the nearest code, so every element comes back within :func:`error_bound` of where it was:
half a step, ``(max(x) - min(x)) / 510``, plus float32 rounding (a few 1e-7 of the largest
magnitude). A constant tensor comes back exactly.

What is quantised is a *difference* between two models that both ends hold, never the weights
themselves: fine-tuning moves a weight far less than the weight's own size, so the step of a
difference is much finer than the step of the weights would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CODES = torch.int8
LEVELS = 255  # 256 codes, -128..127: 255 steps between the smallest and the largest element
_OFFSET = 128


@dataclass(frozen=True)
class Quantised:
    """A tensor in 8 bits: its codes, and the affine map back (``low + (codes + 128) * step``)."""

    codes: torch.Tensor  # int8, the tensor's shape
    low: float
    step: float

    def restore(self) -> torch.Tensor:
        """The tensor back in float32, each element within :func:`error_bound` of the original."""
        return (self.codes.to(torch.float32) + _OFFSET) * self.step + self.low


def quantise(x: torch.Tensor) -> Quantised:
    """``x`` (floating point) in 8 bits; a NaN or infinite element makes ``step`` NaN or infinite."""
    values = x.detach().to(torch.float32)
    if values.numel() == 0:
        return Quantised(torch.zeros(values.shape, dtype=CODES), 0.0, 0.0)
    low_t, high_t = torch.aminmax(values)
    low, step = float(low_t), float((high_t - low_t) / LEVELS)  # float32 values: they travel as float32
    if step == 0.0 or not math.isfinite(step):  # constant (exact), or not finite (the receiver refuses it)
        return Quantised(torch.zeros(values.shape, dtype=CODES), low, step)
    codes = torch.round((values - low) / step).clamp_(0, LEVELS).sub_(_OFFSET).to(CODES)
    return Quantised(codes, low, step)


def error_bound(x: torch.Tensor) -> float:
    """The most any element of ``x`` moves through :func:`quantise` and back, float32 rounding aside."""
    if x.numel() == 0:
        return 0.0
    low, high = (float(v) for v in torch.aminmax(x.detach().to(torch.float32)))
    return (high - low) / LEVELS / 2
