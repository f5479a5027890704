"""The package's layers hold: each module imports only from its own layer or those below it, and
no module imports itself back through others (no cycles). Read with ``ast`` from the sources,
every import counted: lazy ones inside functions and ``TYPE_CHECKING`` ones too.

Bottom to top: errors, core (pure), config, store, snapshot, transport, remote, dispatch, ui, web,
api, cli.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_purity import PACKAGE, imports_of

#: Cycles that exist today, each to be removed, never added to. None are left: the test asserts
#: that the package has no import cycle at all.
KNOWN_CYCLES: set[tuple[str, ...]] = set()
LAYERS = (
    "errors", "core", "config", "store", "snapshot", "transport", "remote", "dispatch", "ui", "web",
    "api",
)  # fmt: skip
TOP = ("cli", "demo", "__main__", "__init__")  # entry points: may import anything below


def modules() -> dict[str, Path]:
    """Every module as its dotted name below ``dispatcher`` (packages by their __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _dotted(mods: dict[str, Path]) -> set[str]:
    return {f"dispatcher.{m}" for m in mods}


def rank(module: str) -> int:
    top = module.split(".")[0]
    if top in LAYERS:
        return LAYERS.index(top)
    assert top in TOP, f"dispatcher/{top} belongs to no layer: add it to LAYERS or TOP"
    return len(LAYERS)


def graph() -> dict[str, set[str]]:
    """Module -> the dispatcher modules it imports (names resolved to modules that exist)."""
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        imported_names = imports_of(path.read_text(encoding="utf-8"), name)
        # `from pkg import sub` names pkg too; the submodule is what it depends on.
        imported_names -= {n.rpartition(".")[0] for n in imported_names if n in _dotted(mods)}
        for imported in imported_names:
            if not imported.startswith("dispatcher."):
                continue
            target = imported.removeprefix("dispatcher.")
            while target and target not in mods:  # `from pkg import name`: name is no module
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = sorted(
        f"{name} ({LAYERS[rank(name)] if rank(name) < len(LAYERS) else 'top'}) imports {target}"
        for name, targets in graph().items()
        for target in targets
        if rank(target) > rank(name)
    )
    assert upward == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert {tuple(c) for c in cycles} - KNOWN_CYCLES == set()
    assert len(cycles) <= len(KNOWN_CYCLES)


@pytest.mark.parametrize(
    ("importer", "imported", "upward"),
    [("core.models", "store.queue", True), ("dispatch.loop", "store.queue", False)],
)
def test_the_rank_tells_up_from_down(importer: str, imported: str, upward: bool) -> None:
    assert (rank(imported) > rank(importer)) is upward
