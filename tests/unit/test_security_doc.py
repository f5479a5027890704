"""docs/security.md names a test for every promise: each named file and function exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def promise_rows() -> list[str]:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    table = text.split("## Promises and their tests", 1)[1].split("\n## ", 1)[0]
    return [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]


def functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
    return {node.name for node in ast.walk(tree) if isinstance(node, kinds)}


def test_every_promise_names_tests_that_exist() -> None:
    rows = promise_rows()
    assert len(rows) >= 10, rows
    for row in rows:
        promise, tests = row.strip("|").rsplit("|", 1)
        files = re.findall(r"tests/[\w/]+\.py", tests)
        assert files, f"no test named for: {promise.strip()}"
        names = set(re.findall(r"\b(test_\w+)\b(?!\.py)", tests))
        present = [ROOT / f for f in files if (ROOT / f).exists()]
        assert all((ROOT / f).exists() for f in files), row
        defined = set().union(*(functions(p) for p in present)) if present else set()
        assert names <= defined, (sorted(names - defined), row)


def test_the_readme_links_the_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/security.md)" in readme
    assert "| [docs/security.md](docs/security.md) |" in readme
