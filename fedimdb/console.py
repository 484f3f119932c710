"""The ``fedimdb`` command (pyproject's ``[project.scripts]``): fedimdb's command lines under one name.

::

    fedimdb run ...       the experiment: repeats on fresh stacks, verified and summarised (= python orchestrate.py)
    fedimdb data ...      the IMDB shards (= python -m fedimdb.data)
    fedimdb inspect ...   report, plots and re-evaluation of archived runs (= python -m fedimdb.inspect)
    fedimdb compose ...   a Compose override for N clients (= python -m fedimdb.deploy.compose)

Each command needs an extra of the project (``pip install -e ".[orchestrator]"``) besides the core a
ClientApp needs: when one of its modules is missing, the command stops before importing anything
with one line that names what to install (:func:`missing_extra`), not with a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PREPARE_EXTRA = {"datasets": "datasets", "flwr-datasets": "flwr_datasets"}
"""The ``prepare`` extra: distribution name -> the module it installs (tests/test_console.py checks pyproject)."""
DP_EXTRA = {"dp-accounting": "dp_accounting"}
"""The ``dp`` extra: Flower's privacy accountant's backend (fedimdb/privacy.py)."""
ORCHESTRATOR_EXTRA = {
    **PREPARE_EXTRA,
    **DP_EXTRA,
    "docker": "docker",
    "requests": "requests",
    "rich": "rich",
    "matplotlib": "matplotlib",
    "pyyaml": "yaml",
    "scipy": "scipy",
}
"""The ``orchestrator`` extra (``prepare`` and ``dp`` included)."""
EXTRAS = {"prepare": PREPARE_EXTRA, "dp": DP_EXTRA, "orchestrator": ORCHESTRATOR_EXTRA}


@dataclass(frozen=True)
class Command:
    """One command of ``fedimdb``: the module whose ``main(argv)`` it runs, and the extra it needs."""

    module: str
    extra: str
    help: str


COMMANDS = {
    "run": Command("fedimdb.cli", "orchestrator", "the experiment: repeats on fresh stacks (python orchestrate.py)"),
    "data": Command("fedimdb.data", "prepare", "the IMDB shards (python -m fedimdb.data)"),
    "inspect": Command(
        "fedimdb.inspect.cli", "orchestrator", "report, plots, re-evaluation (python -m fedimdb.inspect)"
    ),
    "compose": Command(
        "fedimdb.deploy.compose", "orchestrator", "a Compose override (python -m fedimdb.deploy.compose)"
    ),
}


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package missing, or a module left half-imported
        return True


def missing_extra(extra: str) -> str | None:
    """One line naming the install command when a module of ``extra`` is missing; None when all are there."""
    missing = [dist for dist, module in EXTRAS[extra].items() if _absent(module)]
    if not missing:
        return None
    return (
        f'error: {", ".join(missing)} not installed (the project\'s "{extra}" extra); install it with: '
        f'pip install -e ".[{extra}]"'
    )


def run_command(name: str, argv: Sequence[str]) -> int:
    """Run command ``name`` with ``argv``; exit code 2 with one line when its extra is not installed."""
    command = COMMANDS[name]
    problem = missing_extra(command.extra)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    main: Callable[[list[str]], int] = importlib.import_module(command.module).main
    return main(list(argv))


def usage() -> str:
    lines = ["usage: fedimdb COMMAND [options]   (fedimdb COMMAND --help for its options)", "", "commands:"]
    return "\n".join(lines + [f"  {name:<9} {c.help}" for name, c in COMMANDS.items()])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedimdb`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"fedimdb: unknown command {args[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run_command(args[0], args[1:])
