"""GPU needs in ``queue ls`` (a column only when some row has needs), ``queue show`` and
``queue update`` (pending tasks only), through the CLI on a real queue file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from dispatcher.cli import _register, app

_register()
GIB = 2**30


def run(db: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", str(db), *args], terminal_width=200)


def ok(db: Path, *args: str) -> str:
    done = run(db, *args)
    assert done.exit_code == 0, (done.stdout, done.stderr)
    return str(done.stdout)


def needs(db: Path) -> list[tuple[Any, Any, Any]]:
    rows = json.loads(ok(db, "queue", "ls", "--json"))
    return [(t["gpu_memory"], t["gpu_type"], t["min_gpu_memory"]) for t in rows]


def test_ls_shows_a_gpu_needs_column_only_when_some_task_has_needs(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    ok(db, "queue", "add", "--gpus", "2", "--", "plain")
    assert "gpu needs" not in ok(db, "queue", "ls")
    ok(db, "queue", "add", "--gpus", "2", "--gpu-memory", "10GiB", "--gpu-type", "A100|H100",
       "--min-gpu-memory", "40GiB", "--", "shared")  # fmt: skip
    ok(db, "queue", "add", "--gpu-type", "L40", "--", "typed")
    lines = ok(db, "queue", "ls").splitlines()
    assert "gpu needs" in lines[0]
    assert "2×10GiB A100|H100 ≥40GiB" in lines[2] and "L40" in lines[3]
    assert "GiB" not in lines[1]  # the plain task's cell is empty
    show = " ".join(ok(db, "queue", "show", "2").split())  # as one line, however it wraps
    assert "gpu needs 2×10GiB A100|H100 ≥40GiB" in show


def test_update_edits_the_gpu_needs_of_pending_tasks(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    ok(db, "queue", "add", "--gpu-memory", "10GiB", "--grid", "x=1,2", "--", "echo %{x}")
    ok(db, "queue", "add", "--gpus", "0", "--", "cpu")
    out = ok(db, "queue", "update", "1", "2", "--gpu-memory", "12GiB", "--gpu-type", "H100",
             "--min-gpu-memory", "80GiB")  # fmt: skip
    assert out.strip() == "Updated 2 tasks (ids 1-2)."
    assert needs(db)[:2] == [(12 * GIB, "H100", 80 * GIB)] * 2
    ok(db, "queue", "update", "2", "--gpu-memory", "none", "--gpu-type", "none")
    assert needs(db)[:2] == [(12 * GIB, "H100", 80 * GIB), (None, None, 80 * GIB)]
    assert "gpu needs ≥80GiB" in " ".join(ok(db, "queue", "show", "2").split())
    bad = run(db, "queue", "update", "1", "--gpu-memory", "lots")
    assert bad.exit_code == 2 and "gpu memory must be a positive size" in bad.stderr
    slot = run(db, "queue", "update", "3", "--gpu-type", "A100")
    assert slot.exit_code == 2 and "task 3 runs with --gpus 0" in slot.stderr
    assert needs(db)[2] == (None, None, None)  # refused: nothing changed
    nothing = run(db, "queue", "update", "1")
    assert nothing.exit_code == 2 and "--gpu-memory" in nothing.stderr
