"""Print the project's pinned dependencies from pyproject.toml, one per line (for pip -r)."""

import sys

import tomllib

with open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", "rb") as fh:
    print("\n".join(tomllib.load(fh)["project"]["dependencies"]))
