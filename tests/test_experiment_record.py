"""experiment.json's model (fedimdb/experiment_record.py): written and read back unchanged, and every
field's JSON type checked on reading, however deep. Milliseconds."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from fedimdb.experiment_record import (
    Attempt,
    ExperimentRecord,
    ExperimentStatus,
    Orchestrator,
    Repeat,
    RepeatStatus,
)
from fedimdb.json_model import RecordError


def full_record() -> ExperimentRecord:
    """A record with every field set, as after a repeat verified on its second attempt."""
    failed = Attempt(1, "t1", RepeatStatus.FAILED, {"process-groups": [11, 12]}, 3.5, "boom", "repeat-0.failed-1")
    verified = Attempt(2, "t2", RepeatStatus.VERIFIED, {"project": "p"}, 60.25)
    repeat = Repeat(42, [failed, verified], RepeatStatus.VERIFIED, 63.75, 7, 0.8125, 0.41, None, None, ["x"])
    return ExperimentRecord(
        experiment_id="exp",
        backend="local",
        created="t0",
        experiment={"repeats": 1},
        config={"num-rounds": 2},
        data={"alpha": 0.5},
        repeats={"0": repeat, "1": Repeat(43)},
        seeds=[42, 43],
        versions={"flwr": "1.39.0"},
        status=ExperimentStatus.COMPLETED,
        orchestrator=Orchestrator(123, "host"),
        ended="t3",
    )


def test_a_record_survives_json_unchanged() -> None:
    record = full_record()
    text = json.dumps(record.to_json())
    assert ExperimentRecord.from_json(json.loads(text)) == record
    written = json.loads(text)
    assert written["experiment-id"] == "exp" and written["repeats"]["0"]["final-accuracy"] == 0.8125
    assert "error" not in written and "moved-to" not in written["repeats"]["0"], "unset fields are left out"


def _damaged(path: list[str | int], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(full_record().to_json())
    target = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (["repeats", "0", "attempts", 1, "status"], "done", "repeats.0.attempts[1].status is 'done', not one of"),
        (["repeats", "0", "seed"], "42", "repeats.0.seed is a JSON string, not an integer"),
        (["repeats", "0", "run-id"], True, "repeats.0.run-id is a JSON boolean, not an integer"),
        (["seeds", 1], 4.5, "seeds[1] is a JSON number, not an integer"),
        (["orchestrator"], [1], "orchestrator is a JSON array, not an object"),
        (["repeats", "1"], None, "repeats.1 is a JSON null, not an object"),
    ],
)
def test_a_field_of_the_wrong_type_is_named_with_its_path(path: list[str | int], value: Any, problem: str) -> None:
    with pytest.raises(RecordError, match=problem.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        ExperimentRecord.from_json(_damaged(path, value))


def test_a_whole_number_is_a_number_and_a_missing_field_is_named() -> None:
    assert ExperimentRecord.from_json(_damaged(["repeats", "0", "seconds"], 64)).repeats["0"].seconds == 64
    data = full_record().to_json()
    del data["repeats"]["0"]["attempts"][0]["started"]
    with pytest.raises(RecordError, match=r"repeats\.0\.attempts\[0\]\.started is missing"):
        ExperimentRecord.from_json(data)
