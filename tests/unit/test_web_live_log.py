"""The dashboard's log of a running task (``/api/task/ID/log``): read on its host through its
helper from where the page stopped, never the whole log again. A local host through the real
dispatcher (tests/loop_lab.py), the dashboard's routes called as its server calls them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher.cli import app
from dispatcher.core.models import TaskState
from dispatcher.remote import follow
from dispatcher.store.queue import Store
from dispatcher.web import routes
from dispatcher.web.reader import Reader
from dispatcher.web.routes import Api
from tests.loop_lab import LocalLab, until


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LocalLab]:
    lab = LocalLab(tmp_path / "lab", {"a": 1})
    yield lab
    await lab.close()


async def test_a_running_tasks_log_is_read_from_where_the_page_stopped(
    lab: LocalLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "LOG_CHUNK", 8)  # pieces of 8 bytes: each asked for in turn
    sent: list[tuple[int, int]] = []  # each read on the host: (from byte, bytes it sent)
    real = follow.stream_log

    async def counted(*args: Any, **kwargs: Any) -> None:
        await real(*args, **kwargs)
        sent.append((kwargs.get("offset", 0), len(kwargs["out"].getvalue())))

    monkeypatch.setattr(follow, "stream_log", counted)
    gate = tmp_path / "gate"
    cmd = (f"echo first-line; n=0; while [ ! -e {gate} ] && [ $n -lt 3000 ]; do sleep 0.02;"
           " n=$((n + 1)); done; echo second")  # fmt: skip
    added = CliRunner().invoke(app, ["--db", str(lab.db), "queue", "add", "--json", "--gpus",
                                     "0", "--cmd", cmd])  # fmt: skip
    assert added.exit_code == 0, added.output
    (task,) = json.loads(added.stdout)
    running = lab.start()
    await until(lambda: lab.tasks()[task].state == TaskState.RUNNING, "running", running)
    api = Api(Reader(Store(lab.db), min_interval=0.0), lab.hosts_path)

    def read(offset: int) -> dict[str, object]:
        return api.log(task, offset)

    first = await asyncio.to_thread(read, 0)
    assert first == {"text": "first-li", "offset": 8, "done": False}
    rest = await asyncio.to_thread(read, 8)
    assert rest == {"text": "ne\n", "offset": 11, "done": False}
    assert await asyncio.to_thread(read, 11) == {"text": "", "offset": 11, "done": False}
    assert sent == [(0, 8), (8, 3), (11, 0)]  # never what the page has already
    gate.touch()
    assert await running == 0
    ended = await asyncio.to_thread(read, 11)  # the controller's copy now
    assert ended == {"text": "second\n", "offset": 18, "done": True}
