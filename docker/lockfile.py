"""Read the lock files of requirements/ (scripts/lock.sh writes them with ``uv pip compile``).

    lockfile.py LOCK NAME ...             print the entries of those packages, hashes included, for pip -r
    lockfile.py LOCK --without NAME ...   print every other entry

scripts/bootstrap.sh and scripts/wheelhouse.sh take torch's entry alone this way, to fetch it with
PyTorch's index beside PyPI, and scripts/lock.sh a CPU lock less torch; tests/test_lock.py reads
the locks with :func:`read`. Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

# One entry: ``name==version``, an optional marker, then its hashes (uv writes one per line).
ENTRY = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>.+?))?\s*"
    r"(?P<hashes>(?:--hash=sha256:[0-9a-f]{64}\s*)*)"
)


@dataclass(frozen=True)
class Pin:
    """One package of a lock file.

    Attributes
    ----------
    name
        The package's normalized name (PEP 503: lower case, runs of ``-_.`` as ``-``).
    version
        The exact version, a local label included (``2.13.0+cpu``).
    marker
        The environment marker, or ``None``.
    hashes
        The sha256 digests of the files that may be installed, as ``sha256:HEX``.
    text
        The entry as pip reads it, without its comments.
    """

    name: str
    version: str
    marker: str | None
    hashes: tuple[str, ...]
    text: str


def normalize(name: str) -> str:
    """A package name as PEP 503 compares it.

    Parameters
    ----------
    name
        A distribution name as written anywhere.

    Returns
    -------
    str
        The name in lower case, each run of ``-``, ``_`` and ``.`` as one ``-``.
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def read(path: Path | str) -> dict[str, Pin]:
    """The entries of a lock file, by normalized name.

    Parameters
    ----------
    path
        A requirements file written by ``uv pip compile --generate-hashes``.

    Returns
    -------
    dict[str, Pin]
        Every entry, in the file's order.

    Raises
    ------
    ValueError
        A line that is not a comment nor ``name==version`` with its hashes (an option, a range,
        a URL), or a package written twice.
    """
    pins: dict[str, Pin] = {}
    logical: list[str] = []
    for raw in Path(path).read_text().splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line and not logical:
            continue
        logical.append(line.rstrip("\\").strip())
        if line.endswith("\\"):
            continue
        text = " ".join(part for part in logical if part)
        logical = []
        match = ENTRY.fullmatch(text)
        if not match:
            raise ValueError(f"{path}: not an exact pin with hashes: {text!r}")
        name = normalize(match["name"])
        if name in pins:
            raise ValueError(f"{path}: {name} is written twice")
        hashes = tuple(h.removeprefix("--hash=") for h in match["hashes"].split())
        pins[name] = Pin(name, match["version"], match["marker"], hashes, text.replace(" --hash", " \\\n    --hash"))
    return pins


def main(argv: list[str]) -> None:
    """Print the entries that ``argv`` (this script's arguments, see the module's docstring) names."""
    without = argv[1:2] == ["--without"]
    names = [normalize(n) for n in argv[1 + without :]]
    if not names:
        sys.exit(__doc__)
    pins = read(argv[0])
    missing = [n for n in names if n not in pins]
    if missing:
        sys.exit(f"lockfile.py: {', '.join(missing)} not in {argv[0]}")
    print("\n".join(p.text for p in pins.values() if (p.name in names) != without))


if __name__ == "__main__":
    main(sys.argv[1:])
