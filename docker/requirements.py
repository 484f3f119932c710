"""Print fedimdb's requirements from pyproject.toml, one per line: the inputs of scripts/lock.sh.

    requirements.py [--cpu-torch] [--build-system] PYPROJECT [GROUP ...]

The core ``[project] dependencies``, then those of each named extra (``all``: every extra);
an extra's references to the project itself (``fedimdb[prepare]``) are expanded in place.

--cpu-torch       torch's pin names PyTorch's CPU build (``torch==2.13.0`` becomes
                  ``torch==2.13.0+cpu``): what the images and the host install
--build-system    also ``[build-system] requires``: scripts/bootstrap.sh installs fedimdb itself
                  without build isolation, from the host's lock
"""

from __future__ import annotations

import re
import sys
import tomllib
from typing import Any

CPU_TORCH = "cpu"  # the local version label of PyTorch's CPU wheels


def requirements(project: dict[str, Any], groups: list[str]) -> list[str]:
    """The core requirements, then each named extra's, without repeats.

    Parameters
    ----------
    project
        pyproject.toml's ``[project]`` table.
    groups
        Names of extras; ``all`` stands for every extra.

    Returns
    -------
    list[str]
        Requirement strings, in pyproject.toml's order.
    """
    extras = project.get("optional-dependencies", {})
    unknown = sorted(set(groups) - {*extras, "all"})
    if unknown:
        sys.exit(f"requirements.py: unknown group(s) {', '.join(unknown)}; pyproject.toml has {', '.join(extras)}")
    todo = list(extras) if "all" in groups else list(groups)
    out, seen = list(project["dependencies"]), set()
    while todo:
        group = todo.pop(0)
        if group in seen:
            continue
        seen.add(group)
        for req in extras[group]:
            own = re.fullmatch(rf"{re.escape(project['name'])}\[([\w,\s-]+)\]", req.strip())
            todo += [g.strip() for g in own.group(1).split(",")] if own else []
            if not own and req not in out:
                out.append(req)
    return out


def lock_input(pyproject: dict[str, Any], groups: list[str], cpu_torch: bool, build_system: bool) -> list[str]:
    """The requirements that scripts/lock.sh resolves into one lock file.

    Parameters
    ----------
    pyproject
        The whole of pyproject.toml.
    groups
        Names of extras, as for :func:`requirements`.
    cpu_torch
        Pin torch to PyTorch's CPU build of the version pyproject.toml pins (``==X`` becomes ``==X+cpu``).
    build_system
        Append ``[build-system] requires``.

    Returns
    -------
    list[str]
        Requirement strings, one per line of the ``.in`` file.
    """
    out = requirements(pyproject["project"], groups)
    if cpu_torch:
        out = [re.sub(r"^torch==([^\s;+]+)$", rf"torch==\1+{CPU_TORCH}", r.strip()) for r in out]
    if build_system:
        out += [r for r in pyproject["build-system"]["requires"] if r not in out]
    return out


def main(argv: list[str]) -> None:
    """Print the lock input that ``argv`` (this script's arguments) asks for."""
    flags = {a for a in argv if a.startswith("--")}
    args = [a for a in argv if not a.startswith("--")]
    unknown = sorted(flags - {"--cpu-torch", "--build-system"})
    if unknown:
        sys.exit(f"requirements.py: unknown option(s) {', '.join(unknown)}; see its docstring")
    with open(args[0] if args else "pyproject.toml", "rb") as fh:
        pyproject = tomllib.load(fh)
    print("\n".join(lock_input(pyproject, args[1:], "--cpu-torch" in flags, "--build-system" in flags)))


if __name__ == "__main__":
    main(sys.argv[1:])
