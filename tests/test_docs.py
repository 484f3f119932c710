"""The Markdown pages render as written: every code fence closes, every relative link and anchor resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "requirements").glob("*.md")])
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def fenced_blocks(text: str) -> tuple[list[tuple[int, int]], int | None]:
    """The (opening, closing) line numbers of each fenced block, and the line of one left open (None: all close)."""
    blocks, opened, marker = [], None, ""
    for n, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if not match:
            continue
        if opened is None:
            opened, marker = n, match.group(1)
        elif match.group(1)[0] == marker[0] and len(match.group(1)) >= len(marker) and not line.strip()[len(marker) :]:
            blocks.append((opened, n))
            opened = None
    return blocks, opened


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings (outside code): lower case, punctuation dropped, spaces to -."""
    blocks, _ = fenced_blocks(text)
    inside = {n for a, b in blocks for n in range(a, b + 1)}
    heads = [line for n, line in enumerate(text.splitlines(), 1) if n not in inside and line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lstrip("#").strip().lower()).replace(" ", "-") for h in heads}


def prose(text: str) -> str:
    """The page without its fenced blocks and inline code."""
    blocks, _ = fenced_blocks(text)
    inside = {n for a, b in blocks for n in range(a, b + 1)}
    lines = [line for n, line in enumerate(text.splitlines(), 1) if n not in inside]
    return re.sub(r"`[^`]*`", "", "\n".join(lines))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_fence_closes(page: Path) -> None:
    _, left_open = fenced_blocks(page.read_text())
    assert left_open is None, f"{page.name}: the code fence opened on line {left_open} never closes"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    text = page.read_text()
    dead = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text())):
            dead.append(target)
    assert not dead, f"{page.name}: dead links {dead}"


def test_the_checks_catch_what_they_name(tmp_path: Path) -> None:
    assert fenced_blocks("```bash\nx\n```\ntext\n```\nopen\n")[1] == 5
    assert fenced_blocks("````\n```\n````\n")[1] is None
    assert anchors("# Weight scrutiny\n```\n# not a heading\n```\n## The `fedimdb` command\n") == {
        "weight-scrutiny",
        "the-fedimdb-command",
    }
