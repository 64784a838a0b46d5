"""The package layout holds: no import cycle among the tool's modules, no module over 600
lines, and no module importing a layer above its own (the CLI above all: nothing imports it).

Imports are read from the source (module level and inside functions alike), so a lazy import
that closes a cycle is caught too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import seqtune

ROOT = Path(seqtune.__file__).parent
MAX_LINES = 600
# Lowest first: a module may import its own layer or lower ones, never a higher one.
LAYERS = [
    ("seqtune.errors", "seqtune.events", "seqtune.spec", "seqtune.launch",
     "seqtune.interpreter_rounding", "seqtune.checks",
     "seqtune.baselines"),
    ("seqtune.device", "seqtune.registry", "seqtune.agreement", "seqtune.store",
     "seqtune.workload"),
    ("seqtune.loader",),
    ("seqtune.tuning",),
    ("seqtune.fleet",),
    ("seqtune.analysis",),
    ("seqtune.api", "seqtune.compat", "seqtune.integrations", "seqtune"),
    ("seqtune.cli", "seqtune.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """The seqtune modules ``name`` imports (``from a.b import c`` counts as a.b.c when that
    is a module, else a.b)."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def layer_of(name: str) -> int:
    """The layer of the longest matching prefix in LAYERS."""
    best, rank = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS")
    return rank


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_higher_layer(name):
    upward = sorted(m for m in GRAPH[name] if layer_of(m) > layer_of(name))
    assert not upward, f"{name} (layer {layer_of(name)}) imports higher layers: {upward}"


def test_nothing_outside_the_cli_imports_it():
    offenders = sorted(n for n, deps in GRAPH.items()
                       if not n.startswith(("seqtune.cli", "seqtune.__main__"))
                       and any(d.startswith("seqtune.cli") for d in deps))
    assert not offenders


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_too_long(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"


def test_the_checker_sees_a_cycle_and_an_upward_import(monkeypatch):
    """The rules above can fail: a planted cycle and an upward import are caught."""
    monkeypatch.setitem(GRAPH, "seqtune.spec", GRAPH["seqtune.spec"] | {"seqtune.loader"})
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()
    with pytest.raises(AssertionError, match="imports higher layers"):
        test_no_module_imports_a_higher_layer("seqtune.spec")
