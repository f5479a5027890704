"""The pure core stays pure: no database, no SSH, no processes, no sockets, no files, even
indirectly. Every module of ``dispatcher/core`` is checked.

Imports are read with ``ast`` (every ``import`` anywhere in the file, and ``importlib`` /
``__import__`` calls with a literal name) and followed through ``dispatcher.*`` modules, so a pure
module cannot reach duckdb by importing an impure sibling either.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dispatcher"
FORBIDDEN = frozenset({"duckdb", "asyncssh", "subprocess", "socket", "os", "pathlib", "shutil"})
#: The scheduler decides from its inputs alone: no clock, no randomness, no environment.
EXTRA = {"core.scheduler": frozenset({"time", "datetime", "random"})}
#: The pure modules: all of core/.
PURE = tuple(sorted(f"core.{p.stem}" for p in (PACKAGE / "core").glob("*.py")))


def imports_of(source: str, module: str) -> set[str]:
    """Absolute names of every module ``source`` (the module ``dispatcher.<module>``) imports."""
    package = f"dispatcher.{module}".rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            # `from dispatcher.store import queue` imports the module dispatcher.store.queue
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in {"import_module", "__import__"} and isinstance(first, ast.Constant):
                names.add(str(first.value))
    return names


def read_source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def module_path(name: str) -> Path | None:
    """The file of a ``dispatcher.*`` module, or None for other packages and missing modules."""
    if name != "dispatcher" and not name.startswith("dispatcher."):
        return None
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if str(rel) != "." and candidate.is_file():
            return candidate
    return None


def reachable_imports(module: str, read: Callable[[Path], str] = read_source) -> dict[str, str]:
    """Every module imported by ``dispatcher.<module>`` or by the dispatcher modules it imports,
    mapped to the dispatcher module that imports it. The package's lazy ``__init__`` is not
    followed: it is not a dependency a module chooses."""
    seen: dict[str, str] = {}
    todo = [f"dispatcher.{module}"]
    done: set[str] = set()
    while todo:
        current = todo.pop()
        if current in done:
            continue
        done.add(current)
        path = module_path(current)
        if path is None:
            continue
        for name in imports_of(read(path), current.removeprefix("dispatcher.")):
            seen.setdefault(name, current)
            todo.append(name)
    return seen


def violations(module: str, read: Callable[[Path], str] = read_source) -> list[str]:
    banned = FORBIDDEN | EXTRA.get(module, frozenset())
    return sorted(
        f"{importer} imports {name}"
        for name, importer in reachable_imports(module, read).items()
        if name.split(".")[0] in banned
    )


def test_the_core_holds_the_pure_modules() -> None:
    assert {"core.models", "core.scheduler", "core.template", "core.sweep"} <= set(PURE)


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_nothing_impure(module: str) -> None:
    assert violations(module) == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import duckdb", {"duckdb"}),
        ("import asyncssh.connection as c", {"asyncssh.connection"}),
        ("def f():\n    from subprocess import run", {"subprocess", "subprocess.run"}),
        ("import importlib\nimportlib.import_module('socket')", {"importlib", "socket"}),
        ("__import__('duckdb')", {"duckdb"}),
        ("from .. import store", {"dispatcher", "dispatcher.store"}),
        ("from ..remote import client", {"dispatcher.remote", "dispatcher.remote.client"}),
    ],
)
def test_the_import_reader_sees_every_form(source: str, found: set[str]) -> None:
    assert imports_of(source, "core.scheduler") == found


def test_relative_imports_resolve_from_subpackages() -> None:
    assert "dispatcher.remote.protocol" in imports_of("from .protocol import X", "remote.client")
    assert "dispatcher.errors" in imports_of("from ..errors import E", "remote.client")


def test_an_impure_import_through_a_sibling_is_caught() -> None:
    # models imports dispatcher.errors: were errors to import duckdb, models would not be pure.
    def read(path: Path) -> str:
        extra = "\nimport duckdb\n" if path == PACKAGE / "errors.py" else ""
        return read_source(path) + extra

    assert violations("core.models", read) == ["dispatcher.errors imports duckdb"]


def test_the_scheduler_may_not_read_the_clock() -> None:
    def read(path: Path) -> str:
        extra = "\nimport time\n" if path == PACKAGE / "core" / "scheduler.py" else ""
        return read_source(path) + extra

    assert violations("core.scheduler", read) == ["dispatcher.core.scheduler imports time"]
