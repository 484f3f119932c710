"""Test-only faults: a client told to misbehave, so the server's defences can be checked end to end.

``FEDIMDB_TEST_FAULT="PARTITION:KIND[,PARTITION:KIND ...]"`` in a node's environment makes the
ClientApp serving that partition commit the fault in every train reply. It is read by the
ClientApp only, never by the server, and no setting of fedimdb/config.py enables it: it exists
for the tests. The kinds:

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
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a fault is committed: parsing stays import-light
    import torch

FAULT_VAR = "FEDIMDB_TEST_FAULT"
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
            raise FaultError(f"test fault ({FAULT_VAR}): this client fails every train message")
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
                f"{FAULT_VAR}: {item!r} is not PARTITION:KIND; kinds: {', '.join(KINDS)} "
                f"({' and '.join(VALUED_KINDS)} as KIND=NUMBER)"
            )
        faults[int(partition)] = Fault(kind, float(value) if value else 1.0)
    return faults


def for_partition(environ: Mapping[str, str], partition_id: int) -> Fault:
    """The fault this partition's client is told to commit (:data:`NONE` if none)."""
    return parse(environ.get(FAULT_VAR, "")).get(partition_id, NONE)
