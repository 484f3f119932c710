"""The tests' fault app (tests/fault_app): a Flower client mod around fedimdb's ClientApp, installed
only by the tests (``--app-dir``); fedimdb's own app carries none of it. Flower Messages, no network."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedimdb.config import APP_CONFIG
from fedimdb.deploy import APP_DIR
from fedimdb.deploy.flwr_cli import stage_app
from fedimdb.protocol import ARRAYS, CONFIG, METRICS, NODE_PARTITION_ID, NUM_EXAMPLES, TrainMetrics, arrays_of
from tests.conftest import FAULT_APP, FAULT_CLIENTAPP, fault_app
from tests.fault_app import faults

NODE = 5


pytestmark = pytest.mark.usefixtures("task_identity")


def _components(app: Path) -> dict[str, str]:
    return tomllib.loads((app / APP_CONFIG).read_text())["tool"]["flwr"]["app"]["components"]


def test_fedimdbs_own_app_holds_no_fault_code(tmp_path: Path) -> None:
    """What fedimdb's FAB holds (pyproject's fab-include): no fault app, the ClientApp without mods."""
    staged = stage_app(APP_DIR, tmp_path / "fab")
    files = {str(p.relative_to(staged)) for p in staged.rglob("*.py")}
    assert "client/client_app.py" in files and not [f for f in files if "fault" in f], files
    assert _components(staged)["clientapp"] == "client.client_app:app"
    from client.client_app import app

    assert app._mods == []


def test_the_fault_app_is_fedimdbs_app_behind_the_mod_with_its_plan(tmp_path: Path) -> None:
    app = fault_app("1:nan", tmp_path / "app")
    staged = stage_app(app, tmp_path / "fab")  # as flwr run sees it
    assert _components(staged) == {**_components(APP_DIR), "clientapp": FAULT_CLIENTAPP}
    assert (staged / FAULT_APP.name / "plan.py").read_text() == "PLAN = '1:nan'\n"
    assert (staged / "client" / "client_app.py").read_bytes() == (APP_DIR / "client" / "client_app.py").read_bytes()


def _message(kind: str = MessageType.TRAIN) -> Message:
    content = RecordDict({ARRAYS: ArrayRecord({"w": torch.zeros(2, 3)}), CONFIG: ConfigRecord({"server-round": 1})})
    return Message(content, NODE, kind)


def _context(partition: int) -> Context:
    return Context(
        run_id=7, node_id=NODE, node_config={NODE_PARTITION_ID: partition}, state=RecordDict(), run_config={}
    )


def _trained(msg: Message, context: Context) -> Message:
    """What fedimdb's ClientApp replies, in short: weights one step on, and the train metrics."""
    arrays = {k: torch.from_numpy(v.numpy() + 1.0) for k, v in arrays_of(msg.content).items()}
    metrics = TrainMetrics(int(context.node_config[NODE_PARTITION_ID]), 64, 0.5, 2, 1.0, 64.0, 0.1).to_record()
    return Message(RecordDict({ARRAYS: ArrayRecord(arrays), METRICS: metrics}), reply_to=msg)


def test_the_mod_commits_each_partitions_planned_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults, "PLAN", "0:nan,1:examples,2:scale=10")
    replies = [faults.fault_mod(_message(), _context(k), _trained) for k in range(4)]
    weights = [arrays_of(r.content).to_torch_state_dict()["w"] for r in replies]
    assert torch.isnan(weights[0]).any() and not torch.isnan(weights[1]).any()
    assert [int(r.content[METRICS][NUM_EXAMPLES]) for r in replies] == [64, faults.ABSURD_EXAMPLES, 64, 64]
    assert torch.equal(weights[2], torch.full((2, 3), 10.0)) and torch.equal(weights[3], torch.ones(2, 3))
    evaluate = faults.fault_mod(_message(MessageType.EVALUATE), _context(0), _trained)
    assert not torch.isnan(arrays_of(evaluate.content).to_torch_state_dict()["w"]).any(), "train replies only"


def test_a_raise_fault_fails_before_the_clientapp_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults, "PLAN", "3:raise")
    called = []
    with pytest.raises(faults.FaultError, match="fails every train message"):
        faults.fault_mod(_message(), _context(3), lambda m, c: called.append(m) or _trained(m, c))
    assert not called
