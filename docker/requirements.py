"""Print fedimdb's requirements from pyproject.toml, one per line (for pip -r).

    requirements.py PYPROJECT [GROUP ...]

The core ``[project] dependencies``, then those of each named extra (``all``: every extra);
an extra's references to the project itself (``fedimdb[prepare]``) are expanded in place.
"""

import re
import sys

import tomllib


def requirements(project: dict, groups: list[str]) -> list[str]:
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


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as fh:
        print("\n".join(requirements(tomllib.load(fh)["project"], sys.argv[2:])))
