"""SecAgg+ rounds: Flower's ``SecAggPlusWorkflow`` driven from the round loop; the server learns only the
example-weighted mean of the sampled clients' updates.

Flower 1.39 offers SecAgg+ only in its legacy workflow API: ``SecAggPlusWorkflow`` runs four stages (setup,
share keys, collect masked vectors, unmask), each one train message to every sampled client, on a
``LegacyContext`` whose legacy strategy gives it the fit instructions and takes its aggregate.
:class:`SecureAggregation` gives it both from the round loop's own train messages, which Flower's strategy
sampled and configured as in any round (:class:`_Handover`), and runs it on the loop's grid, observed
(:class:`_Observed`), so that every stage's traffic is counted. The clients answer with client/secure.py:
each masks its update (weights less the global model) weighted by its example count, within
``secagg-clipping-range``, quantised to 2**22 levels. Flower unmasks the sum and divides it by the summed
weights: FedAvg's mean of the updates, within the quantisation error of :func:`error_bound`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, Parameters, Scalar, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedimdb.protocol import METRICS, TENSOR_NAMES, arrays_of, config_of
from server.checks import addressees_of
from server.grid import DelegatingGrid

QUANTISATION_LEVELS = 2**22  # SecAggPlusWorkflow's default quantization_range
RECONSTRUCTION_SHARE = 0.5  # of a client's shares needed to recover its masks should it drop out
FITRES_METRICS = "fitres.metrics"  # Flower's legacy FitRes layout (flwr.compat.common.recorddict_compat)


class Traffic(Protocol):
    """Told each stage's messages and replies (the round loop's observer is one)."""

    def sent(self, server_round: int, messages: Sequence[Message]) -> None:
        """A stage's messages go out."""

    def received(self, server_round: int, replies: Sequence[Message]) -> None:
        """A stage's replies came in."""


@dataclass
class SecureRound:
    """What a SecAgg+ round leaves.

    Parameters
    ----------
    mean_update : ArrayRecord | None
        The example-weighted mean of the clients' updates, by tensor name (None: the protocol halted).
    replies : list[Message]
        The masked replies, their content replaced by the metrics they carried (fedimdb's train-reply
        layout, without arrays): what the server may record of each client.
    failed : list[Message]
        The error replies of every stage.
    addressees : dict[str, int]
        Message id to the node it went to, for every stage's messages.
    """

    mean_update: ArrayRecord | None
    replies: list[Message] = field(default_factory=list)
    failed: list[Message] = field(default_factory=list)
    addressees: dict[str, int] = field(default_factory=dict)


def error_bound(clipping_range: float, max_weight: float, weights: Sequence[float]) -> float:
    """The most one element of the mean update can differ from FedAvg's mean of the same updates.

    Each client scales its update by its weight over ``max_weight`` and rounds stochastically to a step of
    2 x ``clipping_range`` / 2**22 (an error under one step); the sum is divided by the summed scales.
    """
    step = 2 * clipping_range / QUANTISATION_LEVELS
    return len(weights) * step * max_weight / sum(weights)


class SecureAggregation:
    """Rounds aggregated with Flower's SecAgg+ (every sampled client a neighbour of every other).

    Parameters
    ----------
    clipping_range : float
        Each element of a weighted update is clipped to this before quantisation.
    max_weight : float
        The most examples a client's update may be weighted by (the run's ``max-steps`` x ``batch-size``).
    timeout : float
        Seconds to wait for the replies of one stage.
    """

    def __init__(self, clipping_range: float, max_weight: float, timeout: float) -> None:
        self.workflow = SecAggPlusWorkflow(
            num_shares=1.0,
            reconstruction_threshold=RECONSTRUCTION_SHARE,
            max_weight=max_weight,
            clipping_range=clipping_range,
            quantization_range=QUANTISATION_LEVELS,
            timeout=timeout,
        )

    def train(self, grid: Grid, server_round: int, messages: Sequence[Message], traffic: Traffic) -> SecureRound:
        """Run the four stages for ``messages`` (the strategy's train messages: who trains, on what, how)."""
        handover = _Handover(messages, grid)
        context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=handover)
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        observed = _Observed(grid, server_round, traffic)
        self.workflow(observed, context)
        masked = [msg for msg in observed.replies if not msg.has_error() and _is_masked(msg)]
        for msg in masked:
            msg.content = RecordDict({METRICS: MetricRecord(dict(msg.content.config_records[FITRES_METRICS]))})  # type: ignore[arg-type]
        mean = handover.mean_update()
        return SecureRound(mean, masked, _failed(observed, masked if mean is not None else []), observed.addressees)


def _failed(observed: _Observed, masked: Sequence[Message]) -> list[Message]:
    """The error replies of clients whose update is not in the mean: one that fails after its masked update
    came (in the unmask stage) is still in it, its self-mask rebuilt from the others' shares."""
    counted = {msg.metadata.src_node_id for msg in masked}
    failed = []
    for msg in (m for m in observed.replies if m.has_error()):
        node = observed.addressees.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
        if node in counted:
            log(
                WARNING,
                "round %s: node %s failed after its masked update came (%s): it stays in the mean",
                observed.server_round,
                node,
                msg.error.reason,
            )
        else:
            failed.append(msg)
    return failed


def _is_masked(msg: Message) -> bool:
    """Whether ``msg`` is a reply of the collect-masked-vectors stage."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return configs is not None and Key.MASKED_PARAMETERS in configs


class _Observed(DelegatingGrid):
    """The loop's grid, telling ``traffic`` every stage's messages and replies, and keeping the replies."""

    def __init__(self, inner: Grid, server_round: int, traffic: Traffic) -> None:
        super().__init__(inner)
        self.server_round, self.traffic = server_round, traffic
        self.replies: list[Message] = []
        self.addressees: dict[str, int] = {}  # message id -> the node it went to

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Delegated, observed."""
        messages = list(messages)
        self.traffic.sent(self.server_round, messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self.addressees.update(addressees_of(messages))
        self.traffic.received(self.server_round, replies)
        self.replies += replies
        return replies


class _Handover(LegacyStrategy):
    """The legacy strategy SecAggPlusWorkflow asks: the loop's train messages as ``FitIns``; the unmasked mean."""

    def __init__(self, messages: Sequence[Message], grid: Grid) -> None:
        self.messages, self.grid = list(messages), grid
        self.names = list(arrays_of(self.messages[0].content).keys()) if self.messages else []
        self.aggregate: Parameters | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Each train message's node, global model and config (with the tensor names)."""
        return [(GridClientProxy(msg.metadata.dst_node_id, self.grid, 0), self._fitins(msg)) for msg in self.messages]

    def _fitins(self, msg: Message) -> FitIns:
        config: dict[str, Any] = {**config_of(msg.content), TENSOR_NAMES: json.dumps(self.names)}  # no lists in legacy
        return FitIns(compat.arrayrecord_to_parameters(arrays_of(msg.content), keep_input=True), config)

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, Any]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """SecAgg+ hands every result the unmasked mean: keep it."""
        self.aggregate = results[0][1].parameters if results else None
        return self.aggregate, {}

    def mean_update(self) -> ArrayRecord | None:
        """The unmasked mean update by tensor name, in float32 (None: the protocol halted before it)."""
        if self.aggregate is None:
            return None
        arrays = parameters_to_ndarrays(self.aggregate)
        return ArrayRecord({n: Array(np.asarray(a, dtype=np.float32)) for n, a in zip(self.names, arrays, strict=True)})

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Not asked by SecAggPlusWorkflow."""
        return None

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        """Not asked by SecAggPlusWorkflow."""
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        """Not asked by SecAggPlusWorkflow."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """Not asked by SecAggPlusWorkflow."""
        return None
