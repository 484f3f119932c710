"""The global model as the messages carry it, and the clients' replies back in float32.

``weight-transport`` (fedimdb/config.py) picks the dtype of the weights in messages, both ways:
``float32`` sends them as they are, ``float16`` halves them, and ``int8`` sends each tensor's
difference from the state every end loaded before round 1 (the reference). Replies are turned back
into float32 before anything else sees them. Encoding and decoding are fedimdb/protocol.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, Message

from fedimdb.config import FULL_PRECISION
from fedimdb.protocol import ARRAYS, INT8, TransportError, arrays_of, received_state, transport_arrays

if TYPE_CHECKING:
    import torch

Decoder = Callable[[Message], "str | None"]
"""Turns a usable reply's arrays back into float32 in place; returns why it cannot, or None."""


def _as_sent(msg: Message) -> str | None:
    """float32 transport: the reply's arrays are used as they are."""
    return None


@dataclass(frozen=True)
class Wire:
    """How weights travel in a run's messages.

    Parameters
    ----------
    transport : str, default "float32"
        dtype of the weights in messages, both ways.
    reference : Mapping[str, torch.Tensor], optional
        The tensors as every end loads them before round 1 (the initial global model): ``int8``
        transport sends the global model as its difference from this state.
    """

    transport: str = FULL_PRECISION
    reference: Mapping[str, torch.Tensor] | None = None

    def outgoing(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global model ``arrays`` as the messages carry it."""
        if self.transport == FULL_PRECISION:
            return arrays
        return transport_arrays(arrays.to_torch_state_dict(), self.transport, self.reference)

    def carry(self, messages: Iterable[Message], outgoing: ArrayRecord) -> list[Message]:
        """The strategy's ``messages``, each carrying ``outgoing`` (:meth:`outgoing`'s encoding of the global
        model) in place of the float32 model the strategy was given: strategies that keep that model and step
        from it (Flower's FedOpt, FedAvgM, the DP wrappers) never see an encoding."""
        messages = list(messages)
        for msg in messages:
            if ARRAYS in msg.content:
                msg.content[ARRAYS] = outgoing
        return messages

    def decoder(self, outgoing: ArrayRecord) -> Decoder:
        """How replies to messages that carried ``outgoing`` are turned back into float32."""
        if self.transport == FULL_PRECISION:
            return _as_sent
        received = received_state(outgoing, self.reference) if self.transport == INT8 else None

        def decode(msg: Message) -> str | None:
            try:
                msg.content[ARRAYS] = ArrayRecord(received_state(arrays_of(msg.content), received))
            except TransportError as exc:
                return str(exc)
            return None

        return decode
