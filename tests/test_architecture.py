"""The layout's rules, read from the source: which room may import which, and no cycles.

Every import counts, also those inside functions (lazy imports) and under TYPE_CHECKING: a
cycle hidden by a lazy import is still a cycle. The rooms and their allowed imports are the
table of docs/architecture.md.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainer", "storage")

# room -> rooms it may import (itself always); study/_exit.py is shared by cli and launch, and
# ``python -m study`` (study/__main__.py) is, like the console script, the CLI's caller.
ALLOWED = {
    "study.__main__": {"study.cli"},
    "study.cli": {"study.spec", "study.grid", "study.launch", "study.results", "study._exit"},
    "study.results": {"study.grid", "study.spec"},
    "study.grid": {"study.spec"},
    "study.launch": {"study._exit"},
    "study.spec": set(),
    "study._exit": set(),
    "study": set(),
    "trainer": set(),
    "storage": set(),
}
# Rooms that may import the generic layers.
USES = {
    "study.cli": {"storage", "trainer"},
    "study.results": {"storage", "trainer"},
    "study.grid": {"storage", "trainer"},
    "study.launch": {"trainer"},
    "study.spec": {"trainer"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The lrstudy modules ``module`` imports, anywhere in its source."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name in known and name != module}


def _room(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "study":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 1 else "study"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def test_each_room_imports_only_what_the_map_allows() -> None:
    wrong = []
    for module, imported in _graph().items():
        room = _room(module)
        # The root package holds only its docstring: importing it (for study._exit) is free.
        allowed = {"study", room, *ALLOWED[room], *USES.get(room, set())}
        wrong += [f"{module} -> {name}" for name in imported if _room(name) not in allowed]
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(sorted(wrong))


def test_there_is_no_import_cycle_not_even_through_a_lazy_import() -> None:
    graph = _graph()
    # A package's __init__ re-exports its modules; a module importing its own package's
    # __init__ is how Python resolves ``from pkg import x`` and is not a cycle of design.
    edges = {
        module: {name for name in targets if not module.startswith(f"{name}.")}
        for module, targets in graph.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


_HEAVY = ("keras", "tensorflow", "jax", "scipy", "matplotlib", "plotly")
_PROBE = """
import json, sys
from study.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["status", "--help"],
        ["export", "--help"],
        ["run", "--help"],
        ["lr-find", "--help"],
    ],
)
def test_help_loads_no_heavy_library(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=_HEAVY), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []
