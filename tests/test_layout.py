"""The import graph of the code that ships (fedimdb/, server/, client/): no cycles, layers kept.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: hiding a cycle there
keeps it. The graph is read from the sources with ``ast``: nothing is imported but by the last test,
which runs the command line's imports in a child process.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from fedimdb.deploy import APP_DIR

PACKAGES = ("fedimdb", "server", "client")


def module_name(path: Path) -> str:
    parts = path.relative_to(APP_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """Project modules a source imports: ``from a.b import c`` is a.b.c when that is a module, else a.b."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
    return out & modules


def import_graph() -> dict[str, set[str]]:
    files = [f for pkg in PACKAGES for f in sorted((APP_DIR / pkg).rglob("*.py"))]
    modules = {module_name(f) for f in files}
    return {module_name(f): imported(ast.parse(f.read_text()), modules) - {module_name(f)} for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_backend_interface_and_the_experiment_loop_import_no_concrete_backend() -> None:
    graph = import_graph()
    concrete = {"fedimdb.deploy.docker_backend", "fedimdb.deploy.local"}
    for module in ("fedimdb.deploy.backend", "fedimdb.experiment"):
        assert not graph[module] & concrete, f"{module} imports {graph[module] & concrete}"


def test_the_command_line_loads_the_docker_sdk_only_for_docker() -> None:
    code = "import sys, fedimdb.cli; print(sorted(m for m in ('docker', 'fedimdb.deploy.docker_backend') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=APP_DIR, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_round_loop_records_nothing_itself() -> None:
    """server/loop.py tells an observer; what records (rows, metrics, artifacts, weight statistics) is apart."""
    graph = import_graph()
    recording = {"server.recorder", "server.scrutiny", "fedimdb.metrics.server", "fedimdb.artifacts"}
    assert not graph["server.loop"] & recording, f"server.loop imports {graph['server.loop'] & recording}"
    assert "server.loop" not in graph["server.recorder"] | graph["server.checks"]
