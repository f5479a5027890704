"""Several processes share one queue file: no write is lost while a dispatcher-like writer runs."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from dispatcher.core.models import TaskState
from dispatcher.store.queue import Store, TaskBatch

S = TaskState
ADDERS, ADDS = 4, 250


def _adder(path: str, worker: int) -> None:
    store = Store(Path(path), lock_timeout=60)
    for i in range(ADDS):  # one transaction per task: the worst case for contention
        store.add_batch(TaskBatch("run %{w} %{i}", [[{"w": worker, "i": i}]]))


def _mover(path: str, stop: Event, moved: Synchronized[int]) -> None:
    """Like a dispatcher: short transactions that take pending tasks through a whole attempt."""
    store = Store(Path(path), lock_timeout=60)
    while not stop.wait(0.2):  # a dispatcher ticks; it does not spin
        with store.transaction() as tx:
            for task in tx.pending_candidates(8):
                run = f"r{task.id}"
                tx.move(task.id, S.LAUNCHING, host="h", run_id=run, gpu_ids=[0])
                tx.move(task.id, S.RUNNING, run_id=run)
                tx.move(task.id, S.SUCCEEDED, run_id=run, exit_code=0)
                moved.value += 1


@pytest.mark.slow  # 1000 serialized write transactions: 15-40 s on a busy 2-core machine
def test_concurrent_adds_race_a_state_writer_and_none_is_lost(tmp_path: Path) -> None:
    path = str(tmp_path / "q.duckdb")
    Store(Path(path)).counts()  # create the file up front
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    moved = ctx.Value("i", 0)
    mover = ctx.Process(target=_mover, args=(path, stop, moved))
    adders = [ctx.Process(target=_adder, args=(path, w)) for w in range(ADDERS)]
    mover.start()
    for p in adders:
        p.start()
    deadline = time.monotonic() + 120
    for p in adders:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    moved_while_adding = moved.value
    stop.set()
    mover.join(timeout=60)
    for p in [*adders, mover]:
        if p.is_alive():
            p.kill()
        p.join()
    assert [p.exitcode for p in adders] == [0] * ADDERS
    assert mover.exitcode == 0

    tasks = Store(Path(path)).tasks()
    assert len(tasks) == ADDERS * ADDS
    assert {t.command for t in tasks} == {
        f"run {w} {i}" for w in range(ADDERS) for i in range(ADDS)
    }
    assert [t.id for t in tasks] == list(range(1, ADDERS * ADDS + 1))
    assert moved_while_adding > 0  # the writers really raced
    done = [t for t in tasks if t.state is S.SUCCEEDED]
    assert len(done) == moved.value
    assert all(t.attempt == 1 and t.run_id == f"r{t.id}" for t in done)
