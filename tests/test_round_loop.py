"""The round loop (server/loop.py) on Flower Messages, without a network: milliseconds a test.

A Grid whose nodes are functions answering each message at once (tests/instant_grid.py) stands in
for the SuperLink; a real Flower FedAvg samples and aggregates, and a real Recorder fills the rows of clients.csv and
rounds.csv. The same loop over real processes: tests/test_reliability.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import FedAvg

from fedimdb.config import FULL_PRECISION, RunConfig
from fedimdb.metrics.server import ServerMetrics
from fedimdb.protocol import (
    ARRAYS,
    CONFIG,
    EVALUATE_RECEIVED,
    INT8,
    METRICS,
    TrainMetrics,
    arrays_of,
    payload_bytes,
    server_round_of,
)
from fedimdb.run_record import RECURS
from fedimdb.training import EvalResult
from server.loop import Federation, RoundFailed, RoundPolicy, wait_for_nodes
from server.recorder import Recorder
from server.records import ClientStatus, RoundLog
from server.strategy import make_strategy
from server.wire import Wire
from tests.instant_grid import PARTITIONS, SUPERLINK, InstantGrid, Node, honest, weights, wire_client

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("task_identity")]


def poisoned(msg: Message) -> Message:
    """A client whose update is NaN."""
    arrays = {k: torch.full(v.shape, float("nan")) for k, v in arrays_of(msg.content).items()}
    metrics = TrainMetrics(PARTITIONS[msg.metadata.dst_node_id], 64, 0.5, 2, 1.0, 64.0, 0.1).to_record()
    return Message(RecordDict({ARRAYS: ArrayRecord(arrays), METRICS: metrics}), reply_to=msg)


def gone(msg: Message) -> Message:
    """What the SuperLink answers for a node that stopped: an error reply from itself."""
    reply = Message(Error(2, "node gone"), reply_to=msg)
    reply.metadata.__dict__["_src_node_id"] = SUPERLINK
    return reply


def then(first: Node, later: Node) -> Node:
    """A client that answers its first message as ``first`` does, the rest as ``later``."""
    calls: list[Message] = []

    def answer(msg: Message) -> Message | None:
        calls.append(msg)
        return (first if len(calls) == 1 else later)(msg)

    return answer


class Federated:
    """A federation over an InstantGrid, recorded by a real Recorder into a RoundLog."""

    def __init__(
        self,
        nodes: Mapping[int, Node],
        evaluate_received: bool = False,
        fraction_train: float = 1.0,
        seed: int = 0,
        **policy: Any,
    ) -> None:
        self.grid = InstantGrid(nodes)
        self.log = RoundLog()
        self.strategy = OrderedFedAvg(fraction_train=fraction_train, fraction_evaluate=1.0, min_available_nodes=1)
        recorder = Recorder(self.log, ServerMetrics(7, RunConfig()))
        policy = {"num_clients": len(nodes), "min_reply_fraction": 1.0, "retries": 1, "node_wait_timeout": 0, **policy}
        self.federation = Federation(
            self.strategy, self.grid, recorder, RoundPolicy(**policy), Wire(), evaluate_received, seed
        )
        self.ends: list[tuple[int, float]] = []

    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """What server_app's RoundEnd does, in short: the round's row, with a central evaluation."""
        self.ends.append((server_round, float(arrays["w"].numpy()[0])))
        if server_round > 0:
            self.log.finish_round(server_round, EvalResult(0.7, 0.5, 100), 0.0)
        return MetricRecord({"accuracy": 0.5})

    def __call__(self, num_rounds: int = 1) -> Any:
        return self.federation.run(weights(0.0), num_rounds, self.end_round)

    def clients(self, server_round: int = 1) -> dict[int, tuple[str, str]]:
        """Partition -> (status, reason) in the round's clients.csv rows."""
        return {r["partition_id"]: (r["status"], r["reason"]) for r in self.log.clients if r["round"] == server_round}


class OrderedFedAvg(FedAvg):
    """Flower's FedAvg, noting the partitions of the replies it aggregates, in the order it gets them."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        self.order = [int(msg.content[METRICS]["partition-id"]) for msg in replies]  # type: ignore[index]
        return super().aggregate_train(server_round, replies)


def test_a_round_aggregates_the_usable_updates_in_partition_order() -> None:
    run = Federated({11: honest(examples=64, step=1.0), 12: honest(examples=192, step=2.0), 13: honest()})
    result = run(num_rounds=2)
    assert run.strategy.order == [0, 1, 2]  # the grid answers in reverse
    np.testing.assert_allclose(result.arrays["w"].numpy(), [2 * (64 + 2 * 192 + 64) / 320] * 3, rtol=1e-6)
    assert [r for r, _ in run.ends] == [0, 1, 2]
    assert [w for _, w in run.ends] == pytest.approx([0.0, (64 + 2 * 192 + 64) / 320, 2 * (64 + 2 * 192 + 64) / 320])
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]
    assert run.clients(2) == {p: (ClientStatus.OK, "") for p in (0, 1, 2)}
    assert run.grid.sent("train") == [11, 11, 12, 12, 13, 13]


def test_a_refused_update_is_asked_for_again_from_that_client_only() -> None:
    run = Federated({11: honest(), 12: then(poisoned, honest()), 13: honest()})
    run()
    assert run.grid.sent("train") == [11, 12, 12, 13]
    assert run.clients() == {p: (ClientStatus.OK, "") for p in (0, 1, 2)}  # its row shows the update used
    assert run.log.rounds[0]["retries"] == 1 and run.log.rounds[0]["clients_participating"] == 3


def raising(reason: str) -> Node:
    """A client whose ClientApp raises: Flower's error reply from the node itself."""
    return lambda msg: Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)


def test_every_client_raising_the_same_error_fails_the_run_as_one_that_recurs() -> None:
    """Marked RECURS (the orchestrator does not retry it) only when every sampled client raised the same error."""
    for nodes, recurs in [
        ({11: raising("KeyError: 'x'"), 12: raising("KeyError: 'x'")}, True),
        ({11: raising("KeyError: 'x'"), 12: raising("MemoryError")}, False),
        ({11: raising("KeyError: 'x'"), 12: then(raising("KeyError: 'x'"), poisoned)}, False),
        ({11: raising("KeyError: 'x'"), 12: gone}, False),
    ]:
        with pytest.raises(RoundFailed) as failed:
            Federated(nodes)()
        assert str(failed.value).startswith(RECURS) == recurs, (nodes, str(failed.value))


def test_a_round_short_after_its_retries_fails_naming_each_client_and_reason() -> None:
    run = Federated({11: honest(), 12: poisoned, 13: gone})
    with pytest.raises(RoundFailed) as failed:
        run()
    message = str(failed.value)
    assert message.startswith("round 1: 1 usable updates from 3 sampled clients, 3 needed")
    assert "partition 1 (node 12): tensor w has 3 non-finite values" in message
    assert "partition ? (node 13): error reply 2: node gone" in message  # never named its partition
    assert run.grid.sent("train") == [11, 12, 12, 13]  # not to the node that is gone
    assert run.clients() == {  # the usable update of the failed round is not aggregated: no row
        1: (ClientStatus.REFUSED, "tensor w has 3 non-finite values (NaN or Inf)"),
        "": (ClientStatus.FAILED, "error reply 2: node gone"),
    }
    assert run.log.rounds[0]["clients_failed"] == 1 and run.log.rounds[0]["central_accuracy"] == ""


def test_a_client_that_is_gone_is_not_asked_again_and_is_named_by_its_partition() -> None:
    run = Federated({11: honest(), 12: honest(), 13: then(honest(), gone)}, evaluate_received=True)
    with pytest.raises(RoundFailed, match=r"round 2: .*: partition 2 \(node 13\): error reply 2: node gone"):
        run(num_rounds=2)
    assert run.grid.sent("train") == [11, 11, 12, 12, 13, 13]
    assert run.log.rounds[-1]["retries"] == 1
    assert run.clients(2)[2] == (ClientStatus.FAILED, "error reply 2: node gone"), "its row names its partition"


def test_with_train_evaluation_rides_on_train_messages_and_one_exchange_ends_the_run() -> None:
    run = Federated({node: honest() for node in PARTITIONS}, evaluate_received=True)
    result = run(num_rounds=3)
    configs = [msg.content[CONFIG] for msg in run.grid.pushed if msg.metadata.message_type == "train"]
    assert [EVALUATE_RECEIVED in c for c in configs] == [False] * 3 + [True] * 6
    assert run.grid.sent("evaluate") == [11, 12, 13]  # only after the last round
    assert sorted(result.evaluate_metrics_clientapp) == [3]
    assert run.clients(3)[0][0] == ClientStatus.OK and run.log.clients[-1]["local_eval_accuracy"] == 0.75


def test_separate_local_evaluation_is_an_exchange_every_round() -> None:
    run = Federated({node: honest() for node in PARTITIONS})
    result = run(num_rounds=2)
    assert not any(
        EVALUATE_RECEIVED in msg.content[CONFIG] for msg in run.grid.pushed if msg.metadata.message_type == "train"
    )
    assert run.grid.sent("evaluate") == [11, 11, 12, 12, 13, 13]
    assert sorted(result.evaluate_metrics_clientapp) == [1, 2]
    assert isinstance(result.evaluate_metrics_clientapp[1], MetricRecord)


def test_the_global_model_stays_float32_under_flowers_fedadam() -> None:
    """Flower's FedAdam scales by a NumPy float64 scalar: its aggregate comes back in the global model's dtype."""
    fed = Federated({11: honest(), 12: honest(step=0.5)})
    fed.federation.strategy = make_strategy(RunConfig(strategy="fedadam", num_clients=2))
    result = fed(num_rounds=2)
    assert result.arrays["w"].dtype == "float32" and fed.ends[-1][1] != 0.0


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm"])
@pytest.mark.parametrize("transport", ["float16", INT8])
def test_a_server_optimiser_steps_from_the_global_model_not_from_its_encoding(strategy: str, transport: str) -> None:
    """Flower's FedOpt and FedAvgM keep the arrays configure_train is given and step from them: the loop gives
    them the float32 global model and encodes the messages' copies, so every transport ends where float32 does."""
    reference = {"w": torch.zeros(3)}

    def final(wire: str) -> np.ndarray:
        fed = Federated({node: wire_client(0.1 * (node - 10), wire, reference) for node in (11, 12)})
        cfg = RunConfig(strategy=strategy, server_momentum=0.5, num_clients=2, weight_transport=wire)
        fed.federation.strategy = make_strategy(cfg)
        fed.federation.wire = Wire(wire, reference)
        return fed(num_rounds=3).arrays["w"].numpy()

    np.testing.assert_allclose(final(transport), final(FULL_PRECISION), atol=2e-3)


def test_too_few_clients_online_fails_the_round_after_the_node_wait() -> None:
    grid = InstantGrid({11: honest()})
    assert wait_for_nodes(grid, 1, timeout=0) == [11]
    with pytest.raises(RoundFailed, match="only 1 clients online after 0 s, 2 needed: start the missing SuperNodes"):
        wait_for_nodes(grid, 2, timeout=0)


def sampled_partitions(partitions: Mapping[int, int], seed: int, rounds: int = 4) -> list[list[int]]:
    """The partitions FedAvg sampled for training in each round, half of them, nodes and partitions as given."""
    run = Federated({node: honest(partitions=partitions) for node in partitions}, fraction_train=0.5, seed=seed)
    run(num_rounds=rounds)
    assert sorted(run.grid.sent(MessageType.QUERY)) == sorted(partitions), "each node asked for its partition once"
    trained = [m for m in run.grid.pushed if m.metadata.message_type == MessageType.TRAIN]
    by_round = [(server_round_of(m.content), partitions[m.metadata.dst_node_id]) for m in trained]
    return [sorted(p for k, p in by_round if k == r) for r in range(1, rounds + 1)]


def test_the_same_seed_samples_the_same_partitions_whatever_the_node_ids() -> None:
    """Flower samples node ids at random; seeded and by partition, an attempt or another backend (other
    node ids) trains the same partitions in each round."""
    one = sampled_partitions({11: 0, 12: 1, 13: 2, 14: 3, 15: 4, 16: 5}, seed=7)
    other = sampled_partitions({91: 3, 42: 0, 77: 5, 18: 1, 60: 2, 35: 4}, seed=7)
    assert one == other
    assert all(len(p) == 3 for p in one) and len({tuple(p) for p in one}) > 1, one
    assert sampled_partitions({11: 0, 12: 1, 13: 2, 14: 3, 15: 4, 16: 5}, seed=8) != one


def test_round_seconds_add_up_to_when_each_rounds_accuracy_was_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequential: a round runs from its start to its evaluation's end. Overlapped (overlap-central-eval):
    round 1's evaluation ends during round 2, so round 2 counts from then; the sums are the time from the
    start of round 1 until each round's accuracy was known (what bench.tta adds up)."""
    clock = iter([0.0, 10.0, 30.0])  # start_round(1), start_round(2), start_round(3) read time.monotonic()
    monkeypatch.setattr("server.records.time.monotonic", lambda: next(clock))
    central = EvalResult(0.5, 0.8, 100)
    sequential = RoundLog()
    sequential.start_round(1, 2)
    assert sequential.finish_round(1, central, 2.0, ended=9.0)["round_seconds"] == 9.0
    sequential.start_round(2, 2)
    assert sequential.finish_round(2, central, 2.0, ended=29.0)["round_seconds"] == 19.0
    overlapped = RoundLog()
    clock = iter([0.0, 8.0])
    overlapped.start_round(1, 2)
    overlapped.start_round(2, 2)  # round 1 aggregated at 8 s; its evaluation runs on
    assert overlapped.finish_round(1, central, 2.0, ended=10.0)["round_seconds"] == 10.0
    assert overlapped.finish_round(2, central, 2.0, ended=19.0)["round_seconds"] == 9.0  # 10 + 9: known at 19 s


def test_each_rounds_row_counts_the_payload_bytes_its_messages_and_replies_carried() -> None:
    """Round 1 sends 4 train messages (one resent) and gets 4 replies with weights back; its evaluate
    messages carry the model out and metrics back. The same weights travel on every backend."""
    run = Federated({11: honest(), 12: then(poisoned, honest()), 13: honest()})
    run()
    model = payload_bytes([RecordDict({ARRAYS: weights(0.0)})])
    (row,) = run.log.rounds
    evaluate = len(run.grid.sent("evaluate"))
    assert (row["bytes_sent"], row["bytes_received"]) == ((4 + evaluate) * model, 4 * model), evaluate
