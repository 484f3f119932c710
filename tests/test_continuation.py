"""Continuing a run after its last archived round (server/continuation.py), on Flower Messages: milliseconds.

A run of 4 rounds is compared with one stopped after round 2 and continued from what a state file
holds: the global model and the strategy's own state must come out the same, for Flower's FedAvg,
FedAdam (moments) and FedAvgM (momentum). Over real processes: tests/test_continue_local.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord
from safetensors.torch import load, save

from fedimdb.artifacts import csv_bytes, server_state_name
from fedimdb.config import ConfigError, RunConfig
from fedimdb.metrics.server import ServerMetrics
from fedimdb.run_record import RunRecord
from server.continuation import Continuation, parse_cell, restore_strategy, server_state
from server.loop import Federation, RoundPolicy
from server.recorder import Recorder
from server.records import RoundLog
from server.strategy import make_strategy
from server.wire import Wire
from tests.instant_grid import InstantGrid, honest, weights

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("task_identity")]
ROUNDS, STOP = 4, 2


def federation(strategy_name: str) -> tuple[Federation, Any]:
    """Three honest clients of different steps and sizes, and the named Flower strategy as the run makes it."""
    nodes = {11: honest(64, 1.0), 12: honest(32, -2.0), 13: honest(16, 0.5)}
    strategy = make_strategy(RunConfig(strategy=strategy_name, num_clients=3, server_learning_rate=0.5))
    recorder = Recorder(RoundLog(), ServerMetrics(7, RunConfig()))
    policy = RoundPolicy(num_clients=3, min_reply_fraction=1.0, node_wait_timeout=0)
    return Federation(strategy, InstantGrid(nodes), recorder, policy, Wire()), strategy


def run(strategy_name: str, first_round: int = 1, state: dict[str, torch.Tensor] | None = None) -> dict[int, bytes]:
    """Rounds ``first_round``..ROUNDS (from ``state``'s arrays and strategy state); each round's state file, bytes."""
    fed, strategy = federation(strategy_name)
    kept: dict[int, bytes] = {}

    def end_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round > 0:
            kept[server_round] = save(server_state(arrays, strategy))
        return MetricRecord({"accuracy": 0.5})

    start = weights(0.0)
    if state is not None:
        restore_strategy(strategy, state)
        start = ArrayRecord({k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("arrays/")})
    fed.run(start, ROUNDS, end_round, first_round)
    return kept


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedavgm"])
def test_a_run_continued_from_a_state_file_ends_as_one_never_stopped(strategy: str) -> None:
    whole = run(strategy)
    continued = run(strategy, STOP + 1, load(whole[STOP]))
    assert continued[ROUNDS] == whole[ROUNDS]
    assert continued[STOP + 1] == whole[STOP + 1]
    if strategy != "fedavg":  # the state file holds the strategy's own state, not the model alone
        assert any(k.startswith("strategy/") for k in load(whole[STOP]))


def test_csv_cells_read_back_write_the_same_bytes() -> None:
    rows = [{"round": 3, "loss": 0.1 + 0.2, "tiny": 1e-9, "neg": -2.5e17, "nan": float("nan"), "s": "ok", "e": ""}]
    text = csv_bytes(rows[0], rows).decode()
    header, line = text.splitlines()
    back = [dict(zip(header.split(","), (parse_cell(c) for c in line.split(",")), strict=True))]
    assert csv_bytes(rows[0], back).decode() == text
    assert isinstance(back[0]["round"], int) and isinstance(back[0]["loss"], float) and back[0]["s"] == "ok"


def test_a_continued_run_takes_the_files_of_its_rounds_and_the_last_state(tmp_path: Path) -> None:
    files = [
        "rounds.csv",
        "clients.csv",
        "weights/config.json",
        "weights/round-000.safetensors",
        "weights/round-002.safetensors",
        "weights/round-003.safetensors",  # written before the run died in round 3, not recorded as completed
        "weights/clients/round-002-client-1.safetensors",
        "weights/clients/round-003-client-1.safetensors",
        server_state_name(1),
        server_state_name(2),
    ]
    record = RunRecord(1, 42, {}, {}, {}, "now", rounds_completed=2, files=dict.fromkeys(files, "0" * 64))
    earlier = Continuation(tmp_path, record, {}, {})
    assert earlier.carried_files() == [
        "weights/config.json",
        "weights/round-000.safetensors",
        "weights/round-002.safetensors",
        "weights/clients/round-002-client-1.safetensors",
        server_state_name(2),
    ]
    assert [(c.run_id, c.round) for c in earlier.lineage()] == [(1, 2)]


def test_restored_tensors_come_back_in_the_models_order(tmp_path: Path) -> None:
    """A state file does not keep the model's order (safetensors writes tensors sorted, and reads them back in
    no set order); the continued run must see them in the model's order (float64 sums over them, e.g.
    client_updates.csv's distances, depend on it)."""
    order = ["z.weight", "a.bias", "m.weight"]
    arrays = ArrayRecord({name: torch.full((3,), float(i)) for i, name in enumerate(order)})
    strategy = make_strategy(RunConfig(strategy="fedadam"))
    strategy.m_t = {name: arrays[name].numpy() for name in order}
    state = dict(sorted(load(save(server_state(arrays, strategy))).items(), reverse=True))  # z, m, a: not the model's
    earlier = Continuation(tmp_path, RunRecord(1, 42, {}, {}, {}, "now"), state, {})
    assert list(earlier.arrays(order=order).keys()) == order
    fresh = make_strategy(RunConfig(strategy="fedadam"))
    restore_strategy(fresh, state, order)
    assert list(fresh.m_t) == order
    with pytest.raises(ConfigError, match="holds other tensors than this run's model"):
        earlier.arrays(order=order[:2])
