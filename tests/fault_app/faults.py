"""Faults a client commits, as a Flower client mod: the tests' way to make a node misbehave.

The fault plan, ``"PARTITION:KIND[,PARTITION:KIND ...]"`` (tests/fault_app/plan.py, written by
:func:`tests.conftest.fault_app`), names the partitions whose ClientApp commits a fault in every
train reply; :func:`fault_mod` wraps fedimdb's ClientApp (tests/fault_app/client_app.py). The kinds:

``nan``
    one floating-point tensor of the update holds NaN;
``shape``
    one matrix loses its last row;
``dtype``
    one floating-point tensor travels as float64;
``missing``
    one tensor is left out;
``examples``
    the reply claims 10⁹ training examples;
``raise``
    the ClientApp raises before training (Flower sends the server an error reply);
``scale=K``
    the update (returned − received weights) is multiplied by K;
``slow=S``
    the ClientApp waits S seconds before training (a slow site; a window to kill a node mid-round).

The weights are changed as they travel in float32 or float16 (not int8: its codes are not weights).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedimdb.protocol import (
    ARRAYS,
    NODE_PARTITION_ID,
    NUM_EXAMPLES,
    REFERENCE_DIGEST,
    arrays_of,
    metrics_of,
    received_state,
)

from .plan import PLAN

KINDS = ("nan", "shape", "dtype", "missing", "examples", "raise", "scale", "slow")
VALUED_KINDS = ("scale", "slow")  # written KIND=VALUE
NO_FAULT = "none"
ABSURD_EXAMPLES = 10**9


class FaultError(RuntimeError):
    """The ``raise`` fault."""


@dataclass(frozen=True)
class Fault:
    """One partition's fault: its kind and, for ``scale`` the factor, for ``slow`` the seconds."""

    kind: str
    value: float = 1.0

    def before_training(self) -> None:
        """``raise``: fail the message before any work; ``slow``: wait first."""
        if self.kind == "raise":
            raise FaultError("test fault (tests/fault_app): this client fails every train message")
        if self.kind == "slow":
            time.sleep(self.value)

    def examples(self, num_examples: int) -> int:
        """The example count the reply claims."""
        return ABSURD_EXAMPLES if self.kind == "examples" else num_examples

    def state(self, returned: dict[str, torch.Tensor], received: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weights the reply carries instead of ``returned`` (the trained model's state, ``received`` the global's)."""
        if self.kind == NO_FAULT:
            return returned
        out = dict(returned)
        name = next(k for k, v in out.items() if v.is_floating_point() and v.dim() == 2)
        if self.kind == "nan":
            out[name] = out[name].clone()
            out[name].view(-1)[0] = float("nan")
        elif self.kind == "shape":
            out[name] = out[name][:-1].clone()
        elif self.kind == "dtype":
            out[name] = out[name].double()
        elif self.kind == "missing":
            del out[name]
        elif self.kind == "scale":
            out = {
                k: received[k] + self.value * (v - received[k]) if v.is_floating_point() else v for k, v in out.items()
            }
        return out


NONE = Fault(NO_FAULT)
"""What every client commits unless told otherwise: nothing."""


def parse(text: str) -> dict[int, Fault]:
    """``"1:nan,3:scale=10"`` -> {1: Fault("nan"), 3: Fault("scale", 10.0)}; bad text raises ValueError."""
    faults: dict[int, Fault] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        partition, _, spec = item.partition(":")
        kind, _, value = spec.partition("=")
        if not partition.strip().isdigit() or kind not in KINDS or (kind in VALUED_KINDS) != bool(value):
            raise ValueError(
                f"fault plan: {item!r} is not PARTITION:KIND; kinds: {', '.join(KINDS)} "
                f"({' and '.join(VALUED_KINDS)} as KIND=NUMBER)"
            )
        faults[int(partition)] = Fault(kind, float(value) if value else 1.0)
    return faults


def fault_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod: this node's partition commits its planned fault in every train reply."""
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, context)
    fault = parse(PLAN).get(int(context.node_config[NODE_PARTITION_ID]), NONE)
    fault.before_training()
    reply = call_next(msg, context)
    if fault.kind == NO_FAULT or reply.has_error():
        return reply
    arrays, metrics = arrays_of(reply.content), metrics_of(reply.content)
    if REFERENCE_DIGEST in arrays:
        raise FaultError("the fault app changes weights that travel as float32 or float16, not int8")
    received = received_state(arrays_of(msg.content))
    reply.content[ARRAYS] = ArrayRecord(fault.state(arrays.to_torch_state_dict(), received))
    metrics[NUM_EXAMPLES] = fault.examples(int(metrics[NUM_EXAMPLES]))
    return reply
