"""The server container's output relay (fedimdb/deploy/container.py): the SuperLink's access log apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedimdb.deploy.container import ACCESS_LOGGER, relay

LINES = [
    "INFO :      Starting Flower SuperLink\n",
    f'2026-12-05T12:00:00.000Z INFO {ACCESS_LOGGER} 10.0.0.3:4242 - "POST /v1/runtime/pull-object HTTP/1.1" 200\n',
    "INFO :      [Fleet.ActivateNode] Activated node_id=7\n",
]


@pytest.mark.parametrize("show_access", [False, True])
def test_the_access_log_goes_to_its_file_and_to_the_output_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], show_access: bool
) -> None:
    relay(iter(LINES), tmp_path / "access.log", show_access)
    assert (tmp_path / "access.log").read_text() == LINES[1]
    assert capsys.readouterr().out == "".join(LINES if show_access else [LINES[0], LINES[2]])
