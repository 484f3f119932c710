"""The ServerApp's round end (server/server_app.py ``RoundEnd``) with ``overlap-central-eval``: the
evaluation of round k, run in a thread while round k+1 goes on, scores round k's model, not the one
the next call loads. The real tiny model on a synthetic held-out folder; the evaluation is slowed so
that the next round's weights arrive while it still runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord

from fedimdb.artifacts import RunArtifacts, utc_now
from fedimdb.config import RunConfig
from fedimdb.finetune import Tuned
from fedimdb.metrics.server import ServerMetrics
from fedimdb.model import load_model
from fedimdb.run_record import RunRecord
from server import server_app
from server.records import RoundLog
from server.server_app import RoundEnd
from server.strategy import make_strategy
from tests.held_out import RECIPE, held_out_folder

pytestmark = pytest.mark.timeout(120)
SLOW = 0.5  # seconds each evaluation waits before it reads the model


def round_end_for(folder: Path, held_out: Path, overlap: bool) -> RoundEnd:
    """A RoundEnd of the tiny model over ``held_out``, recording into ``folder``."""
    cfg = RunConfig(
        model="tiny",
        device="cpu",
        held_out_dir=str(held_out),
        eval_rows=24,
        batch_size=8,
        max_length=32,
        overlap_central_eval=overlap,
    )
    model, tokenizer = load_model("tiny", 3)
    tuned = Tuned(model, cfg.fine_tune, cfg.lora_rank)
    record = RunRecord(run_id=1, seed=3, config=cfg.as_dict(), data=RECIPE, versions={}, started=utc_now())
    return RoundEnd(
        cfg, tuned, tokenizer, RunArtifacts(folder, record), RoundLog(), ServerMetrics(1, cfg), None, make_strategy(cfg)
    )


def rounds_evaluated(folder: Path, held_out: Path, overlap: bool) -> list[tuple[float, float]]:
    """(loss, accuracy) of rounds 1 and 2, their weights handed to one RoundEnd back to back."""
    round_end = round_end_for(folder, held_out, overlap)
    tuned, round_log = round_end.tuned, round_end.round_log
    generator = torch.Generator().manual_seed(0)
    start = tuned.travelling()
    for server_round in (1, 2):
        state = {k: v + 0.2 * torch.randn(v.shape, generator=generator) for k, v in start.items()}
        round_log.start_round(server_round, 1)
        round_end(server_round, ArrayRecord(state))
    round_end.settle()
    return [(r["central_loss"], r["central_accuracy"]) for r in round_log.rounds]


def test_an_overlapped_evaluation_scores_the_model_of_its_own_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = server_app.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(SLOW)
        return real(*args, **kwargs)

    monkeypatch.setattr(server_app, "evaluate", slow_evaluate)
    held_out = held_out_folder(tmp_path / "server")
    one_by_one = rounds_evaluated(tmp_path / "sequential", held_out, overlap=False)
    overlapped = rounds_evaluated(tmp_path / "overlapped", held_out, overlap=True)
    assert one_by_one[0] != one_by_one[1], "both rounds score the same: the comparison proves nothing"
    assert overlapped == one_by_one


def test_the_initial_model_is_evaluated_before_round_1_even_when_overlapping(tmp_path: Path) -> None:
    """Round 0 has no round to overlap with but round 1, whose time it would then lengthen: it is
    evaluated when the call returns, and its scores go back to Flower as in the sequential schedule."""
    round_end = round_end_for(tmp_path / "run", held_out_folder(tmp_path / "server"), overlap=True)
    scores = round_end(0, ArrayRecord(round_end.tuned.travelling()))
    assert round_end.pending is None, "round 0 is still being evaluated in the thread"
    assert scores is not None and set(scores) == {"loss", "accuracy"}
    assert round_end.artifacts.record.initial_evaluation is not None
