"""The repeat loop of fedimdb/experiment.py against fake stacks: which failures another attempt gets.

No deployment runs: each stack fails as told at ``run``. A StackError (what a retry can fix) fails
the attempt, sets its folder aside and tries again; anything else (a bug, a full disk) ends the
experiment at once, with no further attempt. Runs in about a second.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from fedimdb.artifacts import read_json
from fedimdb.config import DataConfig, ExperimentConfig, RunConfig, Settings
from fedimdb.deploy.backend import Backend, RoundCallback, Stack, StackError, StackJob
from fedimdb.experiment import Experiment, new_record
from fedimdb.experiment_record import EXPERIMENT_FILE, ExperimentRecord, RepeatStatus


class FailingStack(Stack):
    """Comes up, writes a partial run folder, then fails its run with the backend's next error."""

    def __init__(self, job: StackJob, errors: list[BaseException], jobs: list[StackJob]) -> None:
        super().__init__(job, log=lambda _: None)
        self.errors = errors
        jobs.append(job)

    def up(self) -> None:
        self.job.run_dir.mkdir(parents=True)
        (self.job.run_dir / "partial.txt").write_text("half a run")

    def run(self, on_round: RoundCallback) -> None:
        self.on_handle({"restarted": self.job.name})  # as a stack whose process was started again
        raise self.errors.pop(0)

    def collect(self) -> None:
        raise AssertionError("a failed run is not collected")

    def handle(self) -> dict[str, Any]:
        return {}

    def down(self) -> None:
        pass


def experiment(tmp_path: Path, errors: list[BaseException], retries: int) -> tuple[Experiment, list[StackJob]]:
    jobs: list[StackJob] = []
    backend = Backend("fake", lambda job: FailingStack(job, errors, jobs), lambda handle: "nothing")
    settings = Settings(RunConfig(num_rounds=1), DataConfig(), ExperimentConfig(retries=retries, metrics_port=0))
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    return Experiment(exp_dir, new_record(exp_dir, settings, "fake"), settings, backend, tmp_path, False), jobs


def test_a_stack_failure_sets_the_attempt_aside_and_tries_again(tmp_path: Path) -> None:
    exp, jobs = experiment(tmp_path, [StackError("the SuperLink exited"), StackError("again")], retries=1)
    assert exp.run() == 1
    attempts = exp.record.repeats["0"].attempts
    assert [a.status for a in attempts] == [RepeatStatus.FAILED, RepeatStatus.FAILED]
    assert attempts[0].error == "the SuperLink exited"
    assert [a.set_aside for a in attempts] == ["repeat-0.failed-1", "repeat-0.failed-2"]
    assert (tmp_path / "exp" / "repeat-0.failed-1" / "partial.txt").read_text() == "half a run"
    assert len({job.name for job in jobs}) == 2, "each attempt on a stack of its own"


def test_anything_else_ends_the_experiment_without_another_attempt(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    exp, jobs = experiment(tmp_path, [full, StackError("never reached")], retries=3)
    with pytest.raises(OSError, match="No space left"):
        exp.run()
    assert len(jobs) == 1
    assert exp.record.repeats["0"].attempts[0].status == RepeatStatus.INTERRUPTED


def test_a_stack_handle_that_changes_mid_run_is_saved_at_once(tmp_path: Path) -> None:
    exp, jobs = experiment(tmp_path, [StackError("the SuperLink exited")], retries=0)
    exp.run()
    (attempt,) = read_json(tmp_path / "exp" / EXPERIMENT_FILE)["repeats"]["0"]["attempts"]
    assert attempt["stack"] == {"restarted": jobs[0].name}
    saved = ExperimentRecord.from_json(read_json(tmp_path / "exp" / EXPERIMENT_FILE))
    assert saved == exp.record, "experiment.json reads back as the record that was written"
