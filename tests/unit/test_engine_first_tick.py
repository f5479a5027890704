"""The dispatcher's first round against a real queue file: tasks a previous dispatcher left
launching or running are taken up, whatever attachment of the file the round gets."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dispatcher.config.hosts import HostsConfig
from dispatcher.core.models import NewTask, TaskState
from dispatcher.dispatch.loop import Dispatcher
from dispatcher.dispatch.state import Snapshot
from dispatcher.store import file as store_module
from dispatcher.store.queue import Store


class Quiet:
    def log(self, message: str, *, style: str = "") -> None:
        pass

    def update(self, snapshot: Snapshot) -> None:
        pass


@pytest.mark.parametrize("first_serial", [0, 7])
async def test_the_first_round_takes_up_the_tasks_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_serial: int
) -> None:
    store = Store(tmp_path / "queue.duckdb")
    (left, _) = store.add([NewTask(args={}, template="true", command="true")] * 2).ids
    with store.transaction() as tx:
        tx.move(left, TaskState.LAUNCHING, run_id="t1-a1-x", host="gpu1")
        tx.move(left, TaskState.RUNNING, run_id="t1-a1-x")
    store.release()
    # The attachment numbers of this process: a fresh one may be the very first (serial 0).
    monkeypatch.setattr(store_module, "_aliases", itertools.count(first_serial))
    config = HostsConfig(tmp_path / "hosts.toml", (), None)
    dispatcher = Dispatcher(store, config, Quiet(), tmp_path / "logs")
    dispatcher._tick()
    store.release()
    assert list(dispatcher.active) == [left]
    assert dispatcher.active[left].state is TaskState.RUNNING
    assert dispatcher.counts[TaskState.RUNNING] == 1
    assert dispatcher.counts[TaskState.PENDING] == 1
