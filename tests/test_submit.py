"""What ``flwr run`` is given: a staged copy of the Flower App that builds the very FAB of the checkout."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from fedimdb.deploy import APP_DIR
from fedimdb.deploy.flwr_cli import stage_app


def _content(fab: bytes) -> str:
    return zipfile.ZipFile(BytesIO(fab)).read(".info/CONTENT").decode()


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # in Flower's build
def test_the_staged_app_builds_the_same_fab_as_the_checkout(tmp_path: Path) -> None:
    staged = stage_app(APP_DIR, tmp_path / "app")
    content = _content(build_fab_from_disk(staged))
    assert content == _content(build_fab_from_disk(APP_DIR))
    assert "server/server_app.py," in content and "client/client_app.py," in content
    assert sum(1 for p in staged.rglob("*") if p.is_file()) == content.count("\n") + 1  # nothing else staged
