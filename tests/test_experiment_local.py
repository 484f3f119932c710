"""Experiments with repeats on the local backend (real Flower processes): interrupted and resumed,
a corrupted repeat detected and redone, metrics served while it runs, statistics at the end."""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedimdb.artifacts import RUN_FILE, read_csv, read_json, verify_run
from fedimdb.deploy.local import free_port
from fedimdb.run_record import read_run_record
from tests.conftest import Orchestrator, fingerprint, local_run_args, marked_processes, orchestrate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # a test's share includes the module fixture it triggers
SETTINGS = ["max-steps=2", "batch-size=8", "eval-rows=32", "local-eval-rows=16"]


def _args(out: Path, shards_dir: Path, imdb: Path, *extra: str) -> list[str]:
    return [*local_run_args(out, shards_dir, imdb, clients=2, rounds=1, settings=SETTINGS), *extra]


def _status(exp: Path) -> dict:
    try:
        return read_json(exp / "experiment.json")
    except (OSError, ValueError):
        return {}


def _scrape(port: int, experiment: str) -> dict[str, float]:
    """The experiment's unlabelled-by-repeat samples served on /metrics, by sample name ({} if none)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels == {"experiment": experiment}
    }


def _resume(exp: Path, interrupted: dict) -> Orchestrator:
    """``--resume`` the experiment in ``exp`` (its --out is exp's parent)."""
    args = _args(exp.parent, interrupted["base"] / "shards", interrupted["imdb"], "--resume", exp.name)
    return orchestrate(*args, "--metrics-port", "0", timeout=600)


def _copy_experiment(exp: Path, out: Path) -> Path:
    """A copy of an experiment folder in a fresh --out (file times kept), to resume without touching it."""
    return Path(shutil.copytree(exp, out / exp.name))


@pytest.fixture(scope="module")
def interrupted(imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two repeats; SIGINT once repeat 1 is running, after repeat 0 was verified (the whole of repeat 1
    is the window: waiting for its ServerApp's run.json once missed it in CI); /metrics scraped every
    0.5 s meanwhile."""
    base = tmp_path_factory.mktemp("experiment")
    out, port = base / "results", free_port()
    scrapes: list[dict[str, float]] = []
    exp = None
    with Orchestrator(*_args(out, base / "shards", imdb_dir, "--repeats", "2", "--metrics-port", str(port))) as run:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and run.proc.poll() is None:
            exps = list(out.glob("*/experiment.json")) if out.exists() else []
            exp = exps[0].parent if exps else None
            if exp is not None and (scrape := _scrape(port, exp.name)):
                scrapes.append(scrape)
            reps = _status(exp).get("repeats", {}) if exp else {}
            if reps.get("0", {}).get("status") == "verified" and reps.get("1", {}).get("status") == "running":
                run.proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.5)
        run.wait(timeout=120)
    return {
        "run": run,
        "exp": exp,
        "base": base,
        "scrapes": scrapes,
        "imdb": imdb_dir,
        "record": _status(exp) if exp else {},
    }


@pytest.fixture(scope="module")
def resumed(interrupted: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The interrupted experiment, copied to a fresh --out and finished with --resume."""
    exp = _copy_experiment(interrupted["exp"], tmp_path_factory.mktemp("resumed"))
    repeat0 = fingerprint(exp / "repeat-0")
    run = _resume(exp, interrupted)
    return {"run": run, "exp": exp, "repeat0": repeat0}


def test_interrupt_keeps_what_was_collected(interrupted: dict) -> None:
    run, record = interrupted["run"], interrupted["record"]
    assert run.returncode == 130, run.stderr[-3000:]
    assert record["status"] == "interrupted"
    assert record["repeats"]["0"]["status"] == "verified" and record["repeats"]["1"]["status"] == "interrupted"
    verify_run(interrupted["exp"] / "repeat-0")
    assert "--resume " + interrupted["exp"].name in " ".join(run.stderr.split())
    left = run.leftovers()
    assert not left, f"processes outlived the interrupted orchestrator: {left}"


def test_metrics_were_served_while_running(interrupted: dict) -> None:
    scrapes = interrupted["scrapes"]
    assert scrapes and all(s["fedimdb_repeats_planned"] == 2 for s in scrapes)
    # The round gauge rises while repeat 0 runs ...
    progress = [(s["fedimdb_current_repeat"], s["fedimdb_current_round"]) for s in scrapes]
    assert (0, 1) in progress, f"(repeat, round) as scraped: {progress}"
    # ... and the completed repeats count up: 0 at first, 1 once repeat 0 is verified.
    done = [s["fedimdb_repeats_completed_total"] for s in scrapes]
    assert done[0] == 0 and done[-1] == 1 and done == sorted(done), done


def test_resume_finishes_without_touching_verified_repeats(resumed: dict) -> None:
    run, exp = resumed["run"], resumed["exp"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "repeat 0: verified earlier, kept as it is" in run.stderr
    assert fingerprint(exp / "repeat-0") == resumed["repeat0"]
    record = read_json(exp / "experiment.json")
    assert record["status"] == "completed"
    assert len(record["repeats"]["0"]["attempts"]) == 1
    assert [a["status"] for a in record["repeats"]["1"]["attempts"]][-1] == "verified"
    assert verify_run(exp / "repeat-1").seed == record["seeds"][1] == record["seeds"][0] + 1
    summary = read_csv(exp / "summary.csv")
    acc = [r for r in summary if r["metric"] == "central_accuracy"]
    assert acc and acc[0]["n"] == "2" and acc[0]["ci95_low"] not in ("", "nan")
    for png in ("accuracy.png", "loss.png", "client-train-loss.png", "round-seconds.png"):
        assert (exp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fedimdb_repeats_completed_total" in (exp / "metrics.prom").read_text()


def test_corrupted_repeat_is_detected_and_redone(interrupted: dict, resumed: dict, tmp_path: Path) -> None:
    assert resumed["run"].returncode == 0, resumed["run"].stderr[-3000:]
    exp = _copy_experiment(resumed["exp"], tmp_path)
    before, repeat0 = read_json(exp / "experiment.json"), fingerprint(exp / "repeat-0")
    assert before["status"] == "completed"
    with open(exp / "repeat-1" / "rounds.csv", "a") as fh:
        fh.write("9,tampered\n")
    run = _resume(exp, interrupted)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "repeat 1: no longer verifies" in run.stderr and "rounds.csv: sha256 mismatch" in run.stderr
    corrupt = exp / "repeat-1.corrupt-1"
    assert (corrupt / "rounds.csv").read_text().endswith("9,tampered\n"), "the corrupt copy is kept, not deleted"
    verify_run(exp / "repeat-1")
    after = read_json(exp / "experiment.json")
    assert len(after["repeats"]["1"]["attempts"]) == len(before["repeats"]["1"]["attempts"]) + 1
    assert fingerprint(exp / "repeat-0") == repeat0
    assert json.loads(json.dumps(after["repeats"]["0"])) == before["repeats"]["0"]


@pytest.fixture(scope="module")
def hard_killed(imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One repeat of 2 rounds; once its stack is recorded and round 1 archived, its ServerApp is frozen
    (SIGSTOP: left running, its round 2 would race the resume and, on a loaded machine, could win it), a second
    orchestrator tries to --resume it (refused: it is still running), then the first is killed with SIGKILL
    (no teardown) and the experiment resumed."""
    base = tmp_path_factory.mktemp("hard-kill")
    out = base / "results"
    killed = Orchestrator(*_args(out, base / "shards", imdb_dir, "--metrics-port", "0", "--rounds", "2"))
    found: dict = {"imdb": imdb_dir, "base": base}
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and killed.proc.poll() is None:
            exps = list(out.glob("*/experiment.json")) if out.exists() else []
            attempts = _status(exps[0].parent).get("repeats", {}).get("0", {}).get("attempts", []) if exps else []
            if attempts and attempts[-1].get("stack") and _rounds_archived(exps[0].parent / "repeat-0") >= 1:
                found["exp"] = exps[0].parent
                serverapps = [p for p in marked_processes(killed.mark) if "flwr-serverapp" in " ".join(p.cmdline())]
                for proc in serverapps:  # frozen, so its round 2 cannot end before the kill
                    proc.suspend()
                found["frozen"] = len(serverapps)
                found["second"] = _resume(found["exp"], found)
                killed.proc.kill()
                killed.proc.wait(timeout=30)
                break
            time.sleep(0.5)
        found["left"] = [p.pid for p in marked_processes(killed.mark)]
        found["record"] = _status(found["exp"])
        found["resumed"] = _resume(found["exp"], found)
        found["still-left"] = killed.leftovers(grace=5)
        yield found
    finally:
        killed.kill(grace=1)  # whatever a failed test left


def _rounds_archived(run_dir: Path) -> int:
    try:
        return read_run_record(run_dir / RUN_FILE).rounds_completed
    except (OSError, ValueError):
        return 0


def test_resume_while_the_orchestrator_runs_is_refused(hard_killed: dict) -> None:
    second = hard_killed["second"]
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"experiment {hard_killed['exp'].name} is still being run by process" in " ".join(second.stderr.split())


def test_resume_after_a_hard_kill_stops_the_stack_it_left_and_finishes(hard_killed: dict) -> None:
    assert hard_killed["record"]["repeats"]["0"]["status"] == "running"  # what a killed orchestrator leaves
    assert len(hard_killed["left"]) >= 3, "the killed orchestrator's SuperLink and SuperNodes ran on"
    assert hard_killed["frozen"] == 1, "its ServerApp was found and frozen after round 1"
    run = hard_killed["resumed"]
    assert run.returncode == 0, run.stderr[-3000:]
    said = "repeat 0 attempt 1: its orchestrator was killed; stopped the 5 process groups it left running"
    assert said in run.stderr  # the SuperLink, its SuperExec, 2 SuperNodes and their fork server
    assert hard_killed["still-left"] == [], "the resumed orchestrator stopped what the killed one left"
    record = read_json(hard_killed["exp"] / "experiment.json")
    killed, resumed = record["repeats"]["0"]["attempts"]
    assert [killed["status"], resumed["status"]] == ["abandoned", "verified"]
    assert record["status"] == "completed"
    assert (resumed["continued-from"], resumed["continued-after-round"]) == (killed["set-aside"], 1)
    continued = verify_run(hard_killed["exp"] / "repeat-0")
    assert [c.round for c in continued.continued_from] == [1] and continued.rounds_completed == 2
