"""Experiments with repeats on the local backend (real Flower processes): interrupted and resumed,
a corrupted repeat detected and redone, metrics served while it runs, statistics at the end."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fedimdb.artifacts import read_csv, read_json, verify_run
from fedimdb.deploy.local import free_port

ROOT = Path(__file__).resolve().parents[1]


def _cmd(out: Path, data_dir: Path, imdb: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "orchestrate.py",
        "--env-file",
        "/dev/null",
        "--backend",
        "local",
        "--model",
        "tiny",
        "--clients",
        "2",
        "--rounds",
        "1",
        "--set",
        "max-steps=2",
        "--set",
        "batch-size=8",
        "--set",
        "eval-rows=32",
        "--set",
        "local-eval-rows=16",
        "--data-source",
        str(imdb),
        "--shards-dir",
        str(data_dir),
        "--out",
        str(out),
        *extra,
    ]


def _fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _status(exp: Path) -> dict:
    try:
        return read_json(exp / "experiment.json")
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="module")
def interrupted(imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two repeats; SIGINT while repeat 1 runs, after repeat 0 was verified; metrics scraped meanwhile."""
    base = tmp_path_factory.mktemp("experiment")
    out, port = base / "results", free_port()
    proc = subprocess.Popen(
        _cmd(out, base / "shards", imdb_dir, "--repeats", "2", "--metrics-port", str(port)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    scraped, exp = "", None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        exps = list(out.glob("*/experiment.json")) if out.exists() else []
        exp = exps[0].parent if exps else None
        if exp is not None and not scraped:
            with contextlib.suppress(OSError):
                scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        reps = _status(exp).get("repeats", {}) if exp else {}
        if reps.get("0", {}).get("status") == "verified" and reps.get("1", {}).get("status") == "running":
            time.sleep(5)  # well inside repeat 1
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.5)
    output, _ = proc.communicate(timeout=120)
    return {
        "code": proc.returncode,
        "output": output,
        "exp": exp,
        "out": out,
        "base": base,
        "scraped": scraped,
        "imdb": imdb_dir,
        "repeat0": _fingerprint(exp / "repeat-0") if exp and (exp / "repeat-0").exists() else {},
    }


def test_interrupt_keeps_what_was_collected(interrupted: dict) -> None:
    assert interrupted["code"] == 130, interrupted["output"][-3000:]
    record = read_json(interrupted["exp"] / "experiment.json")
    assert record["status"] == "interrupted"
    assert record["repeats"]["0"]["status"] == "verified" and record["repeats"]["1"]["status"] == "interrupted"
    verify_run(interrupted["exp"] / "repeat-0")
    assert "--resume " + interrupted["exp"].name in " ".join(interrupted["output"].split())
    leftovers = subprocess.run(["pgrep", "-f", str(interrupted["base"] / "shards")], capture_output=True, text=True)
    assert leftovers.stdout == "", "Flower processes outlived the interrupted orchestrator"


def test_metrics_were_served_while_running(interrupted: dict) -> None:
    assert 'fedimdb_repeats_total{experiment="' + interrupted["exp"].name + '"} 2.0' in interrupted["scraped"]
    assert "fedimdb_current_round" in interrupted["scraped"]


def test_resume_finishes_without_touching_verified_repeats(interrupted: dict) -> None:
    exp = interrupted["exp"]
    proc = subprocess.run(
        _cmd(
            interrupted["out"],
            interrupted["base"] / "shards",
            interrupted["imdb"],
            "--resume",
            exp.name,
            "--metrics-port",
            "0",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "repeat 0: verified earlier, kept as it is" in proc.stderr
    assert _fingerprint(exp / "repeat-0") == interrupted["repeat0"]
    record = read_json(exp / "experiment.json")
    assert record["status"] == "completed"
    assert len(record["repeats"]["0"]["attempts"]) == 1
    assert [a["status"] for a in record["repeats"]["1"]["attempts"]][-1] == "verified"
    assert verify_run(exp / "repeat-1")["seed"] == record["seeds"][1] == record["seeds"][0] + 1
    summary = read_csv(exp / "summary.csv")
    acc = [r for r in summary if r["metric"] == "central_accuracy"]
    assert acc and acc[0]["n"] == "2" and acc[0]["ci95_low"] not in ("", "nan")
    for png in ("accuracy.png", "loss.png", "client-train-loss.png", "round-seconds.png"):
        assert (exp / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fedimdb_repeats_completed_total" in (exp / "metrics.prom").read_text()


def test_corrupted_repeat_is_detected_and_redone(interrupted: dict) -> None:
    exp = interrupted["exp"]
    before = read_json(exp / "experiment.json")
    assert before["status"] == "completed"  # after the resume above
    with open(exp / "repeat-1" / "rounds.csv", "a") as fh:
        fh.write("9,tampered\n")
    proc = subprocess.run(
        _cmd(
            interrupted["out"],
            interrupted["base"] / "shards",
            interrupted["imdb"],
            "--resume",
            exp.name,
            "--metrics-port",
            "0",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "repeat 1: no longer verifies" in proc.stderr and "rounds.csv: sha256 mismatch" in proc.stderr
    corrupt = exp / "repeat-1.corrupt-1"
    assert (corrupt / "rounds.csv").read_text().endswith("9,tampered\n"), "the corrupt copy is kept, not deleted"
    verify_run(exp / "repeat-1")
    after = read_json(exp / "experiment.json")
    assert len(after["repeats"]["1"]["attempts"]) == len(before["repeats"]["1"]["attempts"]) + 1
    assert _fingerprint(exp / "repeat-0") == interrupted["repeat0"]
    assert json.loads(json.dumps(after["repeats"]["0"])) == before["repeats"]["0"]
