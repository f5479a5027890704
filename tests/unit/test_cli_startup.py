"""The CLI's start-up path: heavy modules (SSH, DuckDB, pydantic, markdown) stay unloaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatcher.cli import (
    app,
    commands,  # noqa: F401
)

runner = CliRunner()


def _imports(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dispatcher", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_help_imports_nothing_heavy() -> None:
    mods = _imports("--help")
    assert not mods & {"asyncssh", "duckdb", "_duckdb", "pydantic", "rich", "markdown_it"}, mods


def test_status_imports_neither_ssh_nor_pydantic(tmp_path: Path) -> None:
    mods = _imports("--db", str(tmp_path / "q.duckdb"), "status")
    assert "_duckdb" in mods  # the command did run
    assert not mods & {"asyncssh", "pydantic", "markdown_it"}, mods


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["queue", "ls", "--limit", "-1"], "-1 is not in the range"),
        (["queue", "ls", "--limit", "x"], "'x' is not a valid int"),
        (["results", "--format", "nope"], "'nope' is not one of"),
        (["queue", "retry", "1", "two"], "'two' is not a valid int"),
    ],
)
def test_bad_values_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done = runner.invoke(app, ["--db", str(tmp_path / "q.duckdb"), *args])
    assert done.exit_code == 2 and message in done.output, done.output


def test_values_convert(tmp_path: Path) -> None:
    db = str(tmp_path / "q.duckdb")
    added = runner.invoke(
        app, ["--db", db, "queue", "add", "--priority", " 3", "--grid", "x=1,2", "--json",
              "--", "echo", "%{x}"],
    )  # fmt: skip
    assert added.exit_code == 0 and added.output.strip() == "[1, 2]", added.output
    argv = ["--db", db, "queue", "ls", "--json", "--limit", "1", "-s", "pending"]
    shown = runner.invoke(app, argv)
    assert shown.exit_code == 0 and '"priority": 3' in shown.output, shown.output
    assert '"id": 2' not in shown.output
    both = runner.invoke(app, ["--db", db, "results", "-f", "csv", "-s", "pending", "-s", "failed"])
    assert both.exit_code == 0 and both.output.count("\n") == 3, both.output
