"""Secure aggregation (server/secure.py, client/secure.py) on Flower Messages, without a network: Flower's
SecAggPlusWorkflow driven by the round loop, each client behind Flower's secaggplus_mod as the ClientApp's train
handler is. The same through real Flower processes: tests/test_secure_run.py."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from client.secure import secure_mod
from fedimdb.config import SECAGG_PLUS, ConfigError, RunConfig
from fedimdb.metrics.server import ServerMetrics
from server.loop import Federation, RoundFailed, RoundPolicy
from server.recorder import Recorder
from server.records import ClientStatus, RoundLog
from server.scrutiny import WeightLog
from server.secure import SecureAggregation, error_bound
from server.strategy import make_strategy
from server.wire import Wire
from tests.instant_grid import PARTITIONS, InstantGrid, Node, OneTensorRun, honest

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("task_identity")]
SIZE = 10_000
EXAMPLES = {11: 64, 12: 128, 13: 256}  # the most a reply may claim: max-steps x batch-size = 256
CLIP = 0.1
TRAINING = "training"  # secure_client's crashes_in: the train handler behind the mod raises


def secure_client(node: int, step: float, crashes_in: str | None = None) -> Node:
    """A client behind client/secure.py's mod, with a context of its own kept across messages; it gets a copy
    of each message's content, as over the network (the mod takes its stage out of what it is sent). One that
    ``crashes_in`` a stage (``TRAINING``, or one of SecAgg+'s, e.g. ``Stage.UNMASK``) raises there, which Flower
    turns into an error reply."""
    context = Context(7, node, {}, RecordDict(), {})
    inner = honest(examples=EXAMPLES[node], step=step)

    def train(msg: Message, _: Context) -> Message:
        if crashes_in == TRAINING and msg.metadata.message_type == "train":
            raise RuntimeError("out of memory")
        return inner(msg)

    def answer(msg: Message) -> Message:
        delivered = Message(copy.deepcopy(msg.content), dst_node_id=node, message_type=msg.metadata.message_type)
        delivered.metadata.__dict__.update(_message_id=msg.metadata.message_id, _src_node_id=1)
        try:
            if crashes_in is not None and _stage(msg) == crashes_in:
                raise RuntimeError("connection reset")
            reply = secure_mod(delivered, context, train)
        except RuntimeError as exc:
            reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(exc)), reply_to=delivered)
        reply.metadata.__dict__["_src_node_id"] = node
        return reply

    return answer


def _stage(msg: Message) -> str | None:
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if configs is None else str(configs.get(Key.STAGE))


class SecureFederation(OneTensorRun):
    """A securely aggregated federation over an InstantGrid, recorded by a real Recorder (weight stats on)."""

    def __init__(
        self,
        steps: dict[int, float],
        crashing: int | None = None,
        min_reply_fraction: float = 1.0,
        stage: str = TRAINING,
    ) -> None:
        cfg = RunConfig(num_clients=3, min_reply_fraction=min_reply_fraction, secure_aggregation=SECAGG_PLUS)
        self.log, self.weight_log = RoundLog(), WeightLog(3.5)
        recorder = Recorder(self.log, ServerMetrics(7, cfg), weight_log=self.weight_log)
        clients = {node: secure_client(node, step, stage if node == crashing else None) for node, step in steps.items()}
        self.grid = InstantGrid(clients)
        secure = SecureAggregation(CLIP, max(EXAMPLES.values()), 60)
        policy = RoundPolicy(3, min_reply_fraction, 1, 60, 0)
        self.federation = Federation(make_strategy(cfg), self.grid, recorder, policy, Wire(), secure=secure)
        self.size = SIZE


def test_the_secure_aggregate_is_fedavgs_mean_within_the_quantisation_bound() -> None:
    steps = {11: 0.01, 12: -0.02, 13: 0.03}
    run = SecureFederation(steps)
    run(num_rounds=2)
    mean_step = sum(EXAMPLES[n] * s for n, s in steps.items()) / sum(EXAMPLES.values())
    bound = error_bound(CLIP, max(EXAMPLES.values()), list(EXAMPLES.values()))
    for before, after in zip(run.models, run.models[1:], strict=False):
        assert np.abs(after - before - mean_step).max() <= bound
    assert bound < 1e-6


def test_the_server_records_each_clients_metrics_and_no_clients_weights() -> None:
    run = SecureFederation({11: 0.01, 12: 0.02, 13: 0.03})
    run(num_rounds=1)
    assert run.grid.sent("train") == [n for n in (11, 12, 13) for _ in range(4)]  # the four stages
    replies = [msg for msg in run.grid.pushed if msg.metadata.message_type == "train"]
    assert len(replies) == 12
    rows = {r["partition_id"]: (r["status"], r["num_examples"]) for r in run.log.clients}
    assert rows == {PARTITIONS[n]: (ClientStatus.OK, EXAMPLES[n]) for n in EXAMPLES}
    assert run.weight_log.clients == [], "no client_updates.csv rows: there is no update to compare"
    assert int(run.log.rounds[0]["bytes_received"]) > 0


def test_no_reply_the_server_gets_holds_a_clients_weights() -> None:
    seen: list[Message] = []
    run = SecureFederation({11: 0.01, 12: 0.02, 13: 0.03})
    grid_send = run.grid.send_and_receive

    def keep(messages: Any, *, timeout: float | None = None) -> Any:
        replies = list(grid_send(messages, timeout=timeout))
        seen.extend(copy.deepcopy(r) for r in replies if r.metadata.message_type == "train")
        return replies

    run.grid.send_and_receive = keep  # type: ignore[method-assign]
    run(num_rounds=1)
    arrays = [a for msg in seen for record in msg.content.array_records.values() for a in record.values()]
    assert len(seen) == 12 and arrays == [], "a reply carried arrays"


def test_a_client_that_fails_mid_round_is_unmasked_out_of_the_mean_or_fails_the_round() -> None:
    """A client whose training raises drops out after sharing its keys: the others' shares remove its masks,
    and the mean is of the clients left; with min-reply-fraction 1 that is too few, and the round fails."""
    steps = {11: 0.01, 12: -0.02, 13: 0.03}
    run = SecureFederation(steps, crashing=12, min_reply_fraction=0.5)
    run(num_rounds=1)
    left = {n: EXAMPLES[n] for n in (11, 13)}
    mean_step = sum(left[n] * steps[n] for n in left) / sum(left.values())
    bound = error_bound(CLIP, max(EXAMPLES.values()), list(left.values()))
    assert np.abs(run.models[1] - mean_step).max() <= bound
    assert {r["partition_id"]: r["status"] for r in run.log.clients} == {
        0: ClientStatus.OK,
        1: ClientStatus.FAILED,
        2: ClientStatus.OK,
    }
    strict = SecureFederation(steps, crashing=12)
    with pytest.raises(RoundFailed, match=r"round 1: SecAgg\+ aggregated 2 of 3 sampled clients, 3 needed: 1 error"):
        strict(num_rounds=1)


def test_a_client_that_fails_after_its_masked_update_is_in_the_mean_once_and_ok(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client lost in the unmask stage has sent its masked update: the others' shares remove its self-mask,
    so its update is in the mean, clients.csv has one row for it, ok, and the log says why."""
    steps = {11: 0.01, 12: -0.02, 13: 0.03}
    run = SecureFederation(steps, crashing=12, stage=Stage.UNMASK)
    run(num_rounds=1)
    mean_step = sum(EXAMPLES[n] * s for n, s in steps.items()) / sum(EXAMPLES.values())
    bound = error_bound(CLIP, max(EXAMPLES.values()), list(EXAMPLES.values()))
    assert np.abs(run.models[1] - mean_step).max() <= bound
    rows = [(r["partition_id"], r["status"]) for r in run.log.clients]
    assert sorted(rows) == [(PARTITIONS[n], ClientStatus.OK) for n in sorted(steps)]
    assert run.log.rounds[0]["clients_failed"] == 0
    said = [r.getMessage() for r in caplog.records if "node 12" in r.getMessage()]
    assert said == ["round 1: node 12 failed after its masked update came (connection reset): it stays in the mean"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategy": "fedmedian"}, "secure-aggregation=secaggplus with strategy=fedmedian: SecAgg+ releases only"),
        ({"weight-transport": "int8"}, "with weight-transport=int8: SecAgg+ quantises the update itself"),
        ({"dp": "server-fixed"}, "with dp=server-fixed: Flower's DP wrappers clip and noise the replies"),
        ({"archive-client-weights": True}, "with archive-client-weights=true: the server never holds"),
        ({"max-steps": 0}, "with max-steps=0: SecAgg+ needs the most examples"),
        ({"num-clients": 1}, "with 1 clients x fraction-train 1.0: SecAgg+ masks each update"),
    ],
)
def test_what_secure_aggregation_cannot_be_combined_with_is_refused_naming_the_fix(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("+", r"\+").replace("(", r"\(")):
        RunConfig.from_mapping({"secure-aggregation": SECAGG_PLUS, "min-reply-fraction": 1.0, **values})
