"""What the ServerApp and the ClientApps say to each other: message keys and typed reply metrics.

Both sides import these names; no key is typed out twice. Keys set by Flower itself
(``server-round``, FedProx's ``proximal-mu``, FedAvg's weighting key ``num-examples``) are
declared here too, with where they come from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar, TypeVar

if TYPE_CHECKING:  # flwr and torch are imported where records are built: the node-config keys stay import-light
    import torch
    from flwr.app import ArrayRecord, MetricRecord

# RecordDict entries of a message.
ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"

# ConfigRecord entries that Flower's strategies put into train and evaluate messages.
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"  # FedProx only
# ... and the one fedimdb adds to train messages (local-eval = with-train): evaluate the received
# global model on the validation split before training, and put the result in the train reply.
EVALUATE_RECEIVED = "evaluate-received"

# Node config of a SuperNode (``--node-config``): which partition it serves and from where.
NODE_PARTITION_ID = "partition-id"
NODE_SHARD_DIR = "shard-dir"

# MetricRecord entries of the replies.
PARTITION_ID = "partition-id"
NUM_EXAMPLES = "num-examples"  # FedAvg weights replies by this key (its default weighted_by_key)
TRAIN_LOSS = "train-loss"
TRAIN_STEPS = "train-steps"
TRAIN_SECONDS = "train-seconds"
SETUP_SECONDS = "setup-seconds"
TRAIN_SAMPLES_PER_S = "train-samples-per-s"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
RECEIVED_EVAL_LOSS = "received-eval-loss"
RECEIVED_EVAL_ACCURACY = "received-eval-accuracy"
RECEIVED_EVAL_EXAMPLES = "received-eval-examples"


class _ReplyMetrics:
    """A reply's metrics as a typed dataclass; ``KEYS`` maps each field to its MetricRecord key."""

    KEYS: ClassVar[dict[str, str]]

    def to_record(self) -> MetricRecord:
        """The reply's MetricRecord."""
        from flwr.app import MetricRecord

        return MetricRecord(self.as_metrics())

    def as_metrics(self) -> dict[str, int | float]:
        """The entries of the reply's MetricRecord."""
        return {key: getattr(self, name) for name, key in self.KEYS.items()}

    @classmethod
    def from_record(cls: type[M], record: MetricRecord) -> M:
        """Read a reply's MetricRecord, each value converted to its field's type."""
        types = {f.name: _TYPES[str(f.type)] for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{name: types[name](record[key]) for name, key in cls.KEYS.items()})


_TYPES = {"int": int, "float": float}
M = TypeVar("M", bound=_ReplyMetrics)


@dataclass(frozen=True)
class TrainMetrics(_ReplyMetrics):
    """The metrics of one client's train reply."""

    partition_id: int
    num_examples: int
    loss: float
    steps: int
    seconds: float
    samples_per_second: float
    setup_seconds: float  # before training: model and weights, data, the local evaluation if asked

    KEYS: ClassVar[dict[str, str]] = {
        "partition_id": PARTITION_ID,
        "num_examples": NUM_EXAMPLES,
        "loss": TRAIN_LOSS,
        "steps": TRAIN_STEPS,
        "seconds": TRAIN_SECONDS,
        "samples_per_second": TRAIN_SAMPLES_PER_S,
        "setup_seconds": SETUP_SECONDS,
    }


@dataclass(frozen=True)
class EvalMetrics(_ReplyMetrics):
    """The metrics of one client's evaluate reply."""

    partition_id: int
    num_examples: int
    loss: float
    accuracy: float

    KEYS: ClassVar[dict[str, str]] = {
        "partition_id": PARTITION_ID,
        "num_examples": NUM_EXAMPLES,
        "loss": EVAL_LOSS,
        "accuracy": EVAL_ACCURACY,
    }


@dataclass(frozen=True)
class ReceivedEvalMetrics(_ReplyMetrics):
    """A train reply's evaluation of the global model it received (before training on it).

    It shares the train reply's MetricRecord (Flower's strategies take one per reply), under keys
    of its own: FedAvg weights that record by ``num-examples``, the training examples.
    """

    num_examples: int
    loss: float
    accuracy: float

    KEYS: ClassVar[dict[str, str]] = {
        "num_examples": RECEIVED_EVAL_EXAMPLES,
        "loss": RECEIVED_EVAL_LOSS,
        "accuracy": RECEIVED_EVAL_ACCURACY,
    }

    @classmethod
    def in_record(cls, record: MetricRecord) -> bool:
        """Whether a train reply's MetricRecord carries this evaluation."""
        return RECEIVED_EVAL_EXAMPLES in record


def transport_arrays(state: Mapping[str, torch.Tensor], dtype: str) -> ArrayRecord:
    """Weights as they travel: floating-point tensors cast to ``dtype`` (integer buffers as they are)."""
    import torch
    from flwr.app import ArrayRecord

    target = getattr(torch, dtype)
    return ArrayRecord({k: v.to(target) if v.is_floating_point() else v for k, v in state.items()})


def received_state(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """Weights as they arrived, floating-point tensors back in float32 (models and aggregation stay float32)."""

    return {k: v.float() if v.is_floating_point() else v for k, v in arrays.to_torch_state_dict().items()}


def state_view(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    """The arrays as tensors that view the record's own bytes: no copy (``to_torch_state_dict`` copies each).

    Read-only: the tensors share memory with the message; never write to them.
    """
    import io
    import warnings

    import numpy as np
    import torch

    out = {}
    for name, array in arrays.items():
        buf = io.BytesIO(array.data)
        version = np.lib.format.read_magic(buf)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0)(buf)  # fmt: skip
        flat = np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=buf.tell())
        with warnings.catch_warnings():  # "not writable": these views are only read
            warnings.simplefilter("ignore", UserWarning)
            out[name] = torch.from_numpy(flat.reshape(shape, order="F" if fortran else "C"))
    return out
