"""Matplotlib figures without pyplot's global state, written as PNG atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fedimdb.artifacts import write_bytes_atomic

DPI = 100


def new_figure(width: float, height: float) -> Any:
    """An empty ``matplotlib.figure.Figure`` of this size in inches (any backend: nothing is shown)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def png_bytes(fig: Any) -> bytes:
    """A figure as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def write_png(fig: Any, path: Path) -> Path:
    """The figure as PNG at ``path``, atomically; the path."""
    write_bytes_atomic(path, png_bytes(fig))
    return path
