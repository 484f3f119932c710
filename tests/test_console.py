"""The ``fedimdb`` command and a new user's first step: a missing extra is one line naming the install."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedimdb.artifacts import software_versions
from fedimdb.config import MINILM_PACKAGE
from fedimdb.console import COMMANDS, EXTRAS
from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HIDING = """
import runpy, sys
class Hide:  # as if these distributions were never installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Hide())
sys.argv = {argv!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings, this project's own extras expanded."""
    names: set[str] = set()
    for req in requirements:
        name = re.split(r"[<>=!;\[ ]", req, maxsplit=1)[0].lower()
        if name == "fedimdb":
            extra = re.search(r"\[(\w+)\]", req)
            names |= _names(PYPROJECT["project"]["optional-dependencies"][extra.group(1)]) if extra else set()
        else:
            names.add(name)
    return names


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_extras_modules_are_those_pyproject_installs(extra: str) -> None:
    assert set(EXTRAS[extra]) == _names(PYPROJECT["project"]["optional-dependencies"][extra])


def test_the_console_script_runs_each_command() -> None:
    assert PYPROJECT["project"]["scripts"] == {"fedimdb": "fedimdb.console:main"}
    fedimdb = Path(sys.executable).parent / "fedimdb"
    listing = subprocess.run([fedimdb, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert all(name in listing for name in COMMANDS)
    out = subprocess.run([fedimdb, "run", "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "--repeats" in out and "--resume" in out


@pytest.mark.parametrize("hidden", [["datasets"], ["rich", "matplotlib"]])
def test_orchestrate_without_the_orchestrator_extra_says_what_to_install(hidden: list[str]) -> None:
    script = HIDING.format(
        hidden=hidden, argv=["orchestrate.py", "--repeats", "5"], script=str(ROOT / "orchestrate.py")
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.endswith('install it with: pip install -e ".[orchestrator]"') and all(h in line for h in hidden)


def test_run_json_records_the_default_models_package() -> None:
    pinned = (ROOT / "requirements" / "minilm.in").read_text()
    assert f"{MINILM_PACKAGE}==" in pinned, "requirements/minilm.in pins the default model's package"
    assert software_versions()[MINILM_PACKAGE] == re.search(rf"{MINILM_PACKAGE}==(\S+)", pinned).group(1)
