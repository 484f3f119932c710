"""A sweep's grid (pure): axes of setting values, and the cells their product makes.

``--sweep strategy=fedavg,fedadam --sweep alpha=iid,0.1`` is two axes and four cells. A cell is one
experiment whose settings are the sweep's shared ones with the cell's values on top. An axis is a run
setting (its key as ``--set`` spells it) or ``alpha``, where Dirichlet's concentrations and ``iid`` are
values of one axis.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fedimdb.config import ConfigError, RunConfig, config_key

ALPHA = "alpha"  # the partitioning axis: Dirichlet's alpha, or IID
IID = "iid"
DIRICHLET = "dirichlet"
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")  # what a cell's folder name does not keep of a value


def axis_keys() -> tuple[str, ...]:
    """What a sweep may vary: every run setting, and ``alpha``."""
    return (*(config_key(f.name) for f in dataclasses.fields(RunConfig)), ALPHA)


@dataclass(frozen=True)
class Axis:
    """One varied setting and its values, in the order given."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One point of the grid: a value of each axis, in axis order."""

    values: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """Its folder in the sweep's: ``strategy-fedavg_alpha-0.1``."""
        return "_".join(f"{key}-{_UNSAFE.sub('+', value)}" for key, value in self.values)

    def run_values(self) -> dict[str, str]:
        """The run settings the cell sets."""
        return {key: value for key, value in self.values if key != ALPHA}

    def data_values(self) -> dict[str, str]:
        """The data settings the cell sets: ``alpha=iid`` is the IID partitioner, a number Dirichlet's."""
        alpha = dict(self.values).get(ALPHA)
        if alpha is None:
            return {}
        return {"partitioner": IID} if alpha == IID else {"partitioner": DIRICHLET, ALPHA: alpha}

    def data_tag(self) -> str:
        """What tells the cell's shards apart from another cell's: ``iid`` or ``alpha-0.1`` ('' if all share)."""
        alpha = dict(self.values).get(ALPHA)
        return "" if alpha is None else (IID if alpha == IID else f"{ALPHA}-{_UNSAFE.sub('+', alpha)}")


def parse_axis(item: str) -> Axis:
    """``KEY=V1,V2,...`` as an axis; ConfigError naming the fix if it is not one."""
    key, sep, raw = item.partition("=")
    key = key.strip().replace("_", "-")
    values = tuple(v.strip() for v in raw.split(","))
    if not sep or not key or not all(values):
        raise ConfigError(f"--sweep {item!r}: write it as KEY=V1,V2,..., e.g. --sweep strategy=fedavg,fedadam")
    if key not in axis_keys():
        hint = "partitioning is the alpha axis: --sweep alpha=iid,0.1" if key == "partitioner" else None
        raise ConfigError(
            f"--sweep {item!r}: {key} is not a setting a sweep can vary; "
            f"{hint or 'use a run setting (as --set spells it) or alpha'}"
        )
    if len(set(values)) != len(values):
        raise ConfigError(f"--sweep {item!r}: a value is given twice; give each once")
    return Axis(key, values)


def parse_axes(items: Sequence[str]) -> list[Axis]:
    """Every ``--sweep`` option as an axis; each setting on one axis only."""
    axes = [parse_axis(item) for item in items]
    keys = [axis.key for axis in axes]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"--sweep: {', '.join(twice)} on two axes; give each setting's values in one --sweep")
    return axes


def cells_of(axes: Sequence[Axis]) -> list[Cell]:
    """The grid: every combination of the axes' values, the first axis varying slowest."""
    cells = [
        Cell(tuple(zip((a.key for a in axes), combo, strict=True)))
        for combo in itertools.product(*(a.values for a in axes))
    ]
    names = [cell.name for cell in cells]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"--sweep: values that differ only in punctuation give one folder {clash[0]}; rename them")
    return cells
