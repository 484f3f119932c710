"""What the ServerApp and the ClientApps say to each other: message keys and typed reply metrics.

Both sides import these names; no key is typed out twice. Keys set by Flower itself
(``server-round``, FedProx's ``proximal-mu``, FedAvg's weighting key ``num-examples``) are
declared here too, with where they come from.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar, TypeVar, cast

if TYPE_CHECKING:  # flwr and torch are imported where records are built: the node-config keys stay import-light
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

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
# ... and, with secure-aggregation, the global model's tensor names in order, as a JSON list (Flower's legacy
# FitIns, which SecAgg+ carries, has no names and no lists: client/secure.py).
TENSOR_NAMES = "tensor-names"

# The int8 weight transport's entries of an ArrayRecord (see transport_arrays).
INT8 = "int8"
INT8_MAP = ":int8-map"  # beside tensor NAME, NAME:int8-map holds (low, step) as float32
REFERENCE_DIGEST = "int8-reference-sha256"  # the sha256 of the state the differences are taken from

# Node config of a SuperNode (``--node-config``): which partition it serves and from where.
NODE_PARTITION_ID = "partition-id"
NODE_SHARD_DIR = "shard-dir"

# MetricRecord entries of the replies.
PARTITION_ID = "partition-id"
NUM_EXAMPLES = "num-examples"  # FedAvg weights replies by this key (its default weighted_by_key)
UNIFORM_WEIGHT = "uniform-weight"  # 1 in every train and evaluate reply: FedAvg's key under differential privacy
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


# A message's records and entries, typed (a RecordDict's values may be any of the three record kinds).
# Casts only, as Flower's strategies do: nothing is checked beyond what ``content[KEY]`` does (KeyError);
# a train reply's content is checked in server/checks.py before the server reads it.
def arrays_of(content: RecordDict) -> ArrayRecord:
    """The weights of a message (:data:`ARRAYS`)."""
    return cast("ArrayRecord", content[ARRAYS])


def payload_bytes(contents: Iterable[RecordDict]) -> int:
    """Bytes of the weights that travel in messages' contents (the same on every backend): their arrays, and the
    byte strings of their configs (SecAgg+'s masked updates, keys and key shares: server/secure.py)."""
    total = 0
    for content in contents:
        total += sum(len(array.data) for record in content.array_records.values() for array in record.values())
        for config in content.config_records.values():
            for value in config.values():
                total += sum(len(v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, bytes))
    return total


def metrics_of(content: RecordDict) -> MetricRecord:
    """The metrics of a reply (:data:`METRICS`)."""
    return cast("MetricRecord", content[METRICS])


def config_of(content: RecordDict) -> ConfigRecord:
    """The configuration of a train or evaluate message (:data:`CONFIG`)."""
    return cast("ConfigRecord", content[CONFIG])


def server_round_of(content: RecordDict) -> int:
    """The round a train or evaluate message belongs to (:data:`SERVER_ROUND`)."""
    return int(cast("int", config_of(content)[SERVER_ROUND]))


def partition_of(content: RecordDict) -> int:
    """The partition id a reply carries (:data:`PARTITION_ID`)."""
    return int(cast("int", metrics_of(content)[PARTITION_ID]))


class _ReplyMetrics:
    """A reply's metrics as a typed dataclass; ``KEYS`` maps each field to its MetricRecord key."""

    KEYS: ClassVar[dict[str, str]]

    def to_record(self) -> MetricRecord:
        """The reply's MetricRecord."""
        from flwr.app import MetricRecord

        return MetricRecord({**self.as_metrics()})

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
    uniform_weight: int = 1  # the same for every client: differential privacy's noise is calibrated for a plain mean

    KEYS: ClassVar[dict[str, str]] = {
        "partition_id": PARTITION_ID,
        "num_examples": NUM_EXAMPLES,
        "loss": TRAIN_LOSS,
        "steps": TRAIN_STEPS,
        "seconds": TRAIN_SECONDS,
        "samples_per_second": TRAIN_SAMPLES_PER_S,
        "setup_seconds": SETUP_SECONDS,
        "uniform_weight": UNIFORM_WEIGHT,
    }


@dataclass(frozen=True)
class EvalMetrics(_ReplyMetrics):
    """The metrics of one client's evaluate reply."""

    partition_id: int
    num_examples: int
    loss: float
    accuracy: float
    uniform_weight: int = 1  # FedAvg weights evaluate replies by the train replies' key

    KEYS: ClassVar[dict[str, str]] = {
        "partition_id": PARTITION_ID,
        "num_examples": NUM_EXAMPLES,
        "loss": EVAL_LOSS,
        "accuracy": EVAL_ACCURACY,
        "uniform_weight": UNIFORM_WEIGHT,
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


def state_digest(state: Mapping[str, torch.Tensor]) -> bytes:
    """SHA-256 of a state's names, dtypes, shapes and bytes, in key order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().data if tensor.numel() else b"")
    return digest.digest()


def transport_arrays(
    state: Mapping[str, torch.Tensor], dtype: str, reference: Mapping[str, torch.Tensor] | None = None
) -> ArrayRecord:
    """Weights as they travel: floating-point tensors cast to ``dtype`` (integer buffers as they are).

    ``int8`` sends each floating-point tensor's difference from ``reference``, a state both ends
    hold (the model both load before round 1, or the global model the client received), as 8-bit
    codes (fedimdb/quantize.py) with its ``(low, step)`` map under ``NAME`` + :data:`INT8_MAP`,
    and the reference's :func:`state_digest` under :data:`REFERENCE_DIGEST`.
    """
    import torch
    from flwr.app import ArrayRecord

    if dtype == INT8:
        if reference is None:
            raise ValueError("int8 transport needs the reference state both ends hold")
        return ArrayRecord(_int8_arrays(state, reference))
    target = getattr(torch, dtype)
    return ArrayRecord({k: v.to(target) if v.is_floating_point() else v for k, v in state.items()})


def _int8_arrays(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The int8 transport's arrays: codes and map of each float tensor's difference, and the reference's digest."""
    import torch

    from fedimdb.quantize import quantise

    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            out[name] = tensor
            continue
        q = quantise(tensor.float() - reference[name].float())
        out[name] = q.codes
        out[name + INT8_MAP] = torch.tensor([q.low, q.step], dtype=torch.float32)
    out[REFERENCE_DIGEST] = torch.frombuffer(bytearray(state_digest(reference)), dtype=torch.uint8)
    return out


class TransportError(ValueError):
    """Weights that cannot be decoded: the int8 reference differs between the two ends."""


def received_state(arrays: ArrayRecord, reference: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Weights as they arrived, floating-point tensors back in float32 (models and aggregation stay float32).

    An int8 record is decoded against ``reference``, which must be the state it was encoded against
    (its digest is checked): :class:`TransportError` otherwise.
    """
    if REFERENCE_DIGEST in arrays:
        return _from_int8(arrays.to_torch_state_dict(), reference)
    return {k: v.float() if v.is_floating_point() else v for k, v in arrays.to_torch_state_dict().items()}


def _from_int8(
    tensors: dict[str, torch.Tensor], reference: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """reference + each decoded difference; integer tensors as they came."""
    from fedimdb.quantize import CODES, Quantised

    digest = bytes(tensors.pop(REFERENCE_DIGEST).numpy())
    if reference is None or state_digest(reference) != digest:
        raise TransportError(
            "weight-transport=int8: these weights were encoded against another reference model than this end "
            "holds; server and clients must load the same model (same model setting and package versions), "
            "or use weight-transport=float32"
        )
    out = {}
    for name, tensor in tensors.items():
        if name.endswith(INT8_MAP):
            continue
        if tensor.dtype != CODES or name + INT8_MAP not in tensors:
            out[name] = tensor
            continue
        low, step = (float(v) for v in tensors[name + INT8_MAP])
        out[name] = reference[name].float() + Quantised(tensor, low, step).restore()
    return out


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
        shape, fortran, dtype = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )(buf)
        flat = np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=buf.tell())
        with warnings.catch_warnings():  # "not writable": these views are only read
            warnings.simplefilter("ignore", UserWarning)
            out[name] = torch.from_numpy(flat.reshape(shape, order="F" if fortran else "C"))
    return out
