"""What the log says of each completed round (the Compose runner's output, the local backend's log):
its clients, its central accuracy and its seconds, read from the run's rounds.csv."""

from __future__ import annotations

from pathlib import Path

from fedimdb.artifacts import ROUNDS_FILE, csv_bytes
from fedimdb.deploy.flwr_cli import round_line
from server.records import ROUND_COLUMNS


def _rounds(run_dir: Path, *rows: dict[str, object]) -> None:
    run_dir.mkdir(exist_ok=True)
    (run_dir / ROUNDS_FILE).write_bytes(
        csv_bytes(ROUND_COLUMNS, [{**dict.fromkeys(ROUND_COLUMNS, ""), **r} for r in rows])
    )


def test_a_round_is_told_with_its_clients_accuracy_and_seconds(tmp_path: Path) -> None:
    counts = {"clients_sampled": 10, "clients_participating": 8, "clients_failed": 1, "clients_refused": 1}
    _rounds(
        tmp_path,
        {"round": 1, "central_accuracy": 0.5, "round_seconds": 9.0},
        {"round": 2, **counts, "central_accuracy": 0.77904, "round_seconds": 361.04},
    )
    assert round_line(tmp_path, 2, 10) == (
        "round 2/10: 8 of 10 clients aggregated (1 failed, 1 refused), central accuracy 0.7790, 361.0 s"
    )


def test_a_round_without_its_row_or_accuracy_is_still_told(tmp_path: Path) -> None:
    assert round_line(tmp_path, 1, 3) == "round 1/3 done"  # no rounds.csv yet
    _rounds(
        tmp_path,
        {
            "round": 1,
            "clients_sampled": 3,
            "clients_participating": 3,
            "clients_failed": 0,
            "clients_refused": 0,
            "round_seconds": 2.0,
        },
    )
    assert round_line(tmp_path, 2, 3) == "round 2/3 done"
    assert round_line(tmp_path, 1, 3) == "round 1/3: 3 of 3 clients aggregated (0 failed, 0 refused), 2.0 s"
