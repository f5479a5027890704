"""The dashboard's queue table on a 1,000,000-task queue: the first page filtered by state
answers in under half a second (the bound docs/ui.md states), filtering, sorting and paging done
in DuckDB SQL by the server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatcher.cli import _register, app
from dispatcher.core.models import TaskState
from dispatcher.store.queue import Store
from tests.web_ui import ui_server

_register()
#: The bound docs/ui.md gives for the first page of a million-task queue, in seconds.
FIRST_PAGE = 0.5


def million_queue(tmp: Path) -> Path:
    """A 100 x 100 x 100 grid through the real CLI, with a few tasks running and failed."""
    db = tmp / "million.duckdb"
    grid = [f"{k}={','.join(str(i) for i in range(100))}" for k in "abc"]
    argv = ["--db", str(db), "queue", "add", "--gpus", "0", "--cmd", "echo %{a}"]
    result = CliRunner().invoke(app, [*argv, *(x for g in grid for x in ("--grid", g))])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    with Store(db).transaction() as tx:
        for task in tx.pending_candidates(24):
            run = f"scale-{task.id}"
            tx.move(task.id, TaskState.LAUNCHING, host="gpu-a", run_id=run, gpu_ids=[0])
            tx.move(task.id, TaskState.RUNNING, run_id=run)
            if task.id % 3 == 0:
                tx.move(task.id, TaskState.FAILED, exit_code=1)
    return db


@pytest.mark.slow
@pytest.mark.parametrize("state", ["pending", "failed"])
def test_first_page_of_a_million_task_queue_filtered_by_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    monkeypatch.chdir(tmp_path)
    db = million_queue(tmp_path)
    with ui_server(db) as ui:
        start = time.perf_counter()
        page = ui.get(f"/api/queue?state={state}&limit=50")
        took = time.perf_counter() - start
    assert page["total"] == (999_976 if state == "pending" else 8)
    assert len(page["tasks"]) == min(50, page["total"])
    assert all(t["state"] == state for t in page["tasks"])
    assert took < FIRST_PAGE, took
