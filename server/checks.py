"""Which client replies the server refuses to aggregate, and why: pure checks, no I/O.

A train reply is refused when its weights are missing, have tensors missing or extra, the wrong
shapes or dtypes, or non-finite values, or when it claims an absurd number of training examples
(FedAvg weights each update by that number, so one lie would outweigh every honest client).
These checks catch broken clients; they cannot tell a poisoned but finite update from an honest
one. The robust strategies (``fedmedian``, ``fedtrimmedavg``, ``krum``) are the defence there.
:func:`screen` sorts a round's train replies into the usable ones and the refused (:class:`Refusal`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.common.constant import ErrorCode

from fedimdb.protocol import ARRAYS, METRICS, NUM_EXAMPLES, PARTITION_ID, UNIFORM_WEIGHT
from server.records import ClientStatus
from server.wire import Decoder


@dataclass(frozen=True)
class Expected:
    """What a usable train reply carries: the global model's tensors as sent, and an example bound.

    Parameters
    ----------
    shapes : Mapping[str, tuple[int, ...]]
        Tensor name to shape, as in the train messages.
    dtypes : Mapping[str, str]
        Tensor name to dtype (NumPy's name), as in the train messages.
    max_examples : int | None
        The most training examples a client can have used in a round; None when unknown.
    """

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str]
    max_examples: int | None

    @classmethod
    def of(cls, arrays: ArrayRecord, max_examples: int | None) -> Expected:
        """What replies to train messages carrying ``arrays`` must look like."""
        return cls(
            {k: tuple(a.shape) for k, a in arrays.items()}, {k: str(a.dtype) for k, a in arrays.items()}, max_examples
        )


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def arrays_problem(arrays: ArrayRecord, expected: Expected) -> str | None:
    """Why these returned weights cannot be aggregated, or None."""
    missing = [k for k in expected.shapes if k not in arrays]
    if missing:
        return f"tensors missing: {_names(missing)}"
    extra = [k for k in arrays if k not in expected.shapes]
    if extra:
        return f"unexpected tensors: {_names(extra)}"
    for name, array in arrays.items():
        if tuple(array.shape) != expected.shapes[name]:
            return f"tensor {name} has shape {tuple(array.shape)}, expected {expected.shapes[name]}"
        if str(array.dtype) != expected.dtypes[name]:
            return f"tensor {name} is {array.dtype}, expected {expected.dtypes[name]}"
    for name, array in arrays.items():
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating):
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            if bad:
                return f"tensor {name} has {bad} non-finite values (NaN or Inf)"
    return None


def examples_problem(claimed: object, max_examples: int | None) -> str | None:
    """Why a claimed number of training examples is not believable, or None."""
    if isinstance(claimed, bool) or not isinstance(claimed, (int, float)) or not math.isfinite(claimed):
        return f"{NUM_EXAMPLES} is {claimed!r}, not a number"
    if claimed <= 0 or claimed != int(claimed):
        return f"{NUM_EXAMPLES} is {claimed!r}; a client that trained reports a positive whole number"
    if max_examples is not None and claimed > max_examples:
        return f"claims {int(claimed)} training examples; at most {max_examples} fit in a round's budget"
    return None


def train_reply_problem(content: RecordDict, expected: Expected) -> str | None:
    """Why a (non-error) train reply must not be aggregated, or None when it is usable."""
    if ARRAYS not in content.array_records:
        return f"no weights: the reply has no ArrayRecord {ARRAYS!r}"
    if METRICS not in content.metric_records or PARTITION_ID not in content.metric_records[METRICS]:
        return f"no {PARTITION_ID} in the reply's MetricRecord {METRICS!r}"
    metrics = content.metric_records[METRICS]
    # Under differential privacy FedAvg weights replies by it: a client must not count more than the others.
    if metrics.get(UNIFORM_WEIGHT, 1) != 1:
        return f"{UNIFORM_WEIGHT} is {metrics[UNIFORM_WEIGHT]!r}; every client reports 1"
    return examples_problem(metrics.get(NUM_EXAMPLES), expected.max_examples) or arrays_problem(
        content.array_records[ARRAYS], expected
    )


@dataclass(frozen=True)
class Refusal:
    """A train reply that is not aggregated, and why.

    Parameters
    ----------
    node : int
        The node the train message went to (the SuperLink itself answers for a node that died).
    partition : int | None
        The node's partition, when this reply or an earlier one named it.
    status : ClientStatus
        ``failed``: an error reply; ``refused``: an update that cannot be aggregated.
    reason : str
        What was wrong, for the logs, clients.csv and the error of a failed round.
    error_code : int | None
        Flower's error code of an error reply (None: not an error reply).
    """

    node: int
    partition: int | None
    status: ClientStatus
    reason: str
    error_code: int | None = None

    def __str__(self) -> str:
        partition = "?" if self.partition is None else self.partition
        return f"partition {partition} (node {self.node}): {self.reason}"


@dataclass(frozen=True)
class Screened:
    """A batch of train replies, sorted: the usable ones (decoded to float32) and the refusals."""

    usable: list[Message]
    refused: list[Refusal]


def _named_partition(msg: Message) -> int | None:
    """The partition a reply names in its metrics, if it does."""
    if msg.has_error() or METRICS not in msg.content.metric_records:
        return None
    value = msg.content.metric_records[METRICS].get(PARTITION_ID)
    return None if value is None or isinstance(value, list) else int(value)


def screen(
    replies: Iterable[Message],
    expected: Expected,
    decode: Decoder,
    addressees: Mapping[str, int],
    partitions: Mapping[int, int],
) -> Screened:
    """Sort train replies into usable updates and refusals.

    Parameters
    ----------
    replies : Iterable[Message]
        Replies to the round's train messages.
    expected : Expected
        What a usable reply carries.
    decode : Decoder
        Turns a usable reply's arrays back into float32 in place (server/wire.py).
    addressees : Mapping[str, int]
        Message id to the node the train message went to.
    partitions : Mapping[int, int]
        Node id to partition, as earlier replies named it.

    Returns
    -------
    Screened
        The usable replies, in the order given, and a refusal for each of the others.
    """
    screened = Screened([], [])
    for msg in replies:
        if msg.has_error():
            screened.refused.append(failure(msg, addressees, partitions))
        elif (problem := train_reply_problem(msg.content, expected) or decode(msg)) is not None:
            screened.refused.append(_refusal(msg, ClientStatus.REFUSED, problem, addressees, partitions))
        else:
            screened.usable.append(msg)
    return screened


def failure(msg: Message, addressees: Mapping[str, int], partitions: Mapping[int, int]) -> Refusal:
    """The refusal of an error reply (``FAILED``, with Flower's error code and reason); arguments as :func:`screen`'s."""
    reason = f"error reply {msg.error.code}: {msg.error.reason}"
    return _refusal(msg, ClientStatus.FAILED, reason, addressees, partitions)


def _refusal(
    msg: Message, status: ClientStatus, reason: str, addressees: Mapping[str, int], partitions: Mapping[int, int]
) -> Refusal:
    node = addressees.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
    partition = _named_partition(msg)
    partition = partitions.get(node) if partition is None else partition
    return Refusal(node, partition, status, reason, msg.error.code if msg.has_error() else None)


def addressees_of(messages: Iterable[Message]) -> dict[str, int]:
    """Message id to the node it went to, for ``messages`` (as :func:`screen` takes them)."""
    return {msg.metadata.message_id: msg.metadata.dst_node_id for msg in messages}


def raised_alike(refused: Sequence[Refusal], sampled: int) -> bool:
    """Whether every one of ``sampled`` clients failed by its ClientApp raising, all with the same error: a fault
    of the app or its configuration that another attempt would meet again (a lost node or a timeout is not)."""
    raised = all(r.error_code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION for r in refused)
    return raised and len({r.node for r in refused}) == sampled > 0 and len({r.reason for r in refused}) == 1
