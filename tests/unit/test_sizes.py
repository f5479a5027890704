"""Modules stay readable: under 400 lines each, functions under 60 lines of body (a signature of
typer options does not count), except the few listed here with the reason they are allowed."""

from __future__ import annotations

import ast

import pytest

from tests.unit.test_purity import PACKAGE

MODULE_LINES = 400
FUNCTION_LINES = 60
#: Longer modules, and why.
LONG_MODULES = {
    # Shipped to each host as one file whose hash is checked as a whole; it reads as a table of
    # contents (sections in the order a request flows).
    "remote/helper.py",
}
#: Longer functions, and why.
LONG_FUNCTIONS = {
    # One table from asyncssh's and the OS's errors to labtasker's, read top to bottom.
    "transport/errors.py:map_ssh_error",
}


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    first = body[1] if len(body) > 1 and isinstance(body[0], ast.Expr) else body[0]
    assert node.end_lineno is not None
    return node.end_lineno - first.lineno + 1


def sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules, functions = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        source = path.read_text(encoding="utf-8")
        modules[rel] = len(source.splitlines())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions[f"{rel}:{node.name}"] = _body_lines(node)
    return modules, functions


def test_modules_are_under_the_limit() -> None:
    modules, _ = sizes()
    long = {m: n for m, n in modules.items() if n > MODULE_LINES and m not in LONG_MODULES}
    assert long == {}


def test_functions_are_under_the_limit() -> None:
    _, functions = sizes()
    long = {f: n for f, n in functions.items() if n > FUNCTION_LINES and f not in LONG_FUNCTIONS}
    assert long == {}


@pytest.mark.parametrize("name", sorted(LONG_MODULES | LONG_FUNCTIONS))
def test_every_exception_is_still_needed(name: str) -> None:
    modules, functions = sizes()
    size = modules.get(name, functions.get(name))
    limit = MODULE_LINES if name in LONG_MODULES else FUNCTION_LINES
    assert size is not None and size > limit, f"{name} is gone or short now: drop it from the list"
