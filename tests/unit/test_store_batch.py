"""Batched moves on a real queue file: ``Txn.move_many`` and the deferred moves of one tick."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core.models import TaskState
from dispatcher.errors import IllegalTransitionError, StoreError
from dispatcher.store.queue import MoveRequest, Store, TaskBatch

S = TaskState


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "q.duckdb", lock_timeout=30)


def add(store: Store, n: int) -> list[int]:
    return store.add_batch(TaskBatch("run %{i}", [[{"i": i} for i in range(n)]])).ids


def launch_req(task_id: int, host: str = "h", gpus: list[int] | None = None) -> MoveRequest:
    return MoveRequest(task_id, S.LAUNCHING, f"r{task_id}", {"host": host, "gpu_ids": gpus})


def test_a_batch_moves_every_row_and_records_attempts(store: Store) -> None:
    ids = add(store, 4)
    with store.transaction() as tx:
        placed = tx.move_many([launch_req(i, gpus=[n]) for n, i in enumerate(ids)])
        assert [t.state if t else None for t in placed] == [S.LAUNCHING] * 4
        ran = tx.move_many([MoveRequest(i, S.RUNNING, f"r{i}") for i in ids[:3]])
        assert all(t is not None and t.started_at is not None for t in ran)
        done = tx.move_many(
            [
                MoveRequest(ids[0], S.SUCCEEDED, f"r{ids[0]}", {"exit_code": 0}),
                MoveRequest(ids[1], S.FAILED, f"r{ids[1]}", {"exit_code": 2, "reason": "exit 2"}),
                MoveRequest(ids[2], S.LOST, f"r{ids[2]}", {"losses": 1}),
                MoveRequest(ids[3], S.PENDING, f"r{ids[3]}", {"reason": "launch failed"}),
            ]
        )
        returned = {t.id: t for t in done if t is not None}
        attempts = {i: tx.attempts(i) for i in ids}
    stored = {t.id: t for t in store.tasks()}
    for i in ids:  # what move_many returned is what the file holds
        assert returned[i].to_json() == stored[i].to_json()
    assert [stored[i].state for i in ids] == [S.SUCCEEDED, S.FAILED, S.LOST, S.PENDING]
    assert (stored[ids[1]].exit_code, stored[ids[1]].reason) == (2, "exit 2")
    assert (stored[ids[3]].host, stored[ids[3]].run_id, stored[ids[3]].attempt) == (None, None, 1)
    outcomes = {i: [(a.outcome, a.run_id, a.host, a.gpu_ids) for a in attempts[i]] for i in ids}
    assert outcomes == {
        ids[0]: [(S.SUCCEEDED, f"r{ids[0]}", "h", [0])],
        ids[1]: [(S.FAILED, f"r{ids[1]}", "h", [1])],
        ids[2]: [(S.LOST, f"r{ids[2]}", "h", [2])],
        ids[3]: [(S.PENDING, f"r{ids[3]}", "h", [3])],
    }
    assert attempts[ids[1]][0].exit_code == 2 and attempts[ids[1]][0].reason == "exit 2"


def test_an_illegal_move_in_a_batch_refuses_the_whole_batch(store: Store) -> None:
    ids = add(store, 3)
    with store.transaction() as tx:
        tx.move_many([launch_req(ids[0])])
    wanted = [launch_req(ids[1]), MoveRequest(ids[2], S.SUCCEEDED), launch_req(ids[0])]
    illegal = f"task {ids[2]}: cannot move from pending"
    with pytest.raises(IllegalTransitionError, match=illegal), store.transaction() as tx:
        tx.move_many(wanted)
    assert [t.state for t in store.tasks()] == [S.LAUNCHING, S.PENDING, S.PENDING]


def test_a_stale_run_id_is_fenced_off_and_reported(store: Store) -> None:
    a, b = add(store, 2)
    with store.transaction() as tx:
        tx.move_many([launch_req(a), launch_req(b)])
    with store.transaction() as tx:
        done = tx.move_many(
            [
                MoveRequest(a, S.FAILED, "an-old-run", {"exit_code": 1}),
                MoveRequest(b, S.SUCCEEDED, f"r{b}", {"exit_code": 0}),
            ]
        )
        assert done[0] is None and done[1] is not None and done[1].state is S.SUCCEEDED
        assert tx.attempts(a) == [] and len(tx.attempts(b)) == 1
    assert [t.state for t in store.tasks()] == [S.LAUNCHING, S.SUCCEEDED]


def test_a_task_may_move_twice_in_one_batch(store: Store) -> None:
    (a,) = add(store, 1)
    with store.transaction() as tx:
        tx.move_many([launch_req(a)])
        done = tx.move_many(
            [
                MoveRequest(a, S.FAILED, f"r{a}", {"exit_code": 3}),
                MoveRequest(a, S.PENDING, None, {"reason": "retrying"}),
            ]
        )
        assert [t.state if t else None for t in done] == [S.FAILED, S.PENDING]
        assert [x.outcome for x in tx.attempts(a)] == [S.FAILED]
    t = store.get(a)
    assert (t.state, t.reason, t.exit_code, t.run_id) == (S.PENDING, "retrying", 3, None)


def test_held_rows_that_no_longer_hold_roll_the_round_back(store: Store) -> None:
    a, b = add(store, 2)
    with store.transaction() as tx:
        held = {t.id: t for t in tx.tasks()}
    store.cancel([b])  # another process, between our read and our write
    stale = "1 of 2 tasks were not in the state"
    with pytest.raises(StoreError, match=stale), store.transaction() as tx:
        tx.defer_moves(held)
        for task_id in (a, b):
            assert tx.move(task_id, S.LAUNCHING, run_id=f"r{task_id}", host="h") is not None
    assert [t.state for t in store.tasks()] == [S.PENDING, S.CANCELLED]


def test_deferred_moves_are_written_before_the_next_read(store: Store) -> None:
    a, b = add(store, 2)
    with store.transaction() as tx:
        tx.move_many([launch_req(a), launch_req(b)])
    with store.transaction() as tx:
        held = {t.id: t for t in tx.tasks()}
        tx.defer_moves(held)
        moved = tx.move(a, S.RUNNING, run_id=f"r{a}")
        assert moved is not None and moved.state is S.RUNNING
        assert tx.move(b, S.FAILED, run_id="stale") is None  # fenced against the held row
        done = tx.move(a, S.SUCCEEDED, run_id=f"r{a}", exit_code=0)
        assert done is not None and done.state is S.SUCCEEDED
        # A read flushes first: it sees the writes.
        assert tx.counts()[S.SUCCEEDED] == 1
        assert [x.outcome for x in tx.attempts(a)] == [S.SUCCEEDED]
        tx.move(b, S.RUNNING, run_id=f"r{b}")  # flushed at commit
    assert [t.state for t in store.tasks()] == [S.SUCCEEDED, S.RUNNING]


def test_a_deferred_illegal_move_raises_at_once(store: Store) -> None:
    (a,) = add(store, 1)
    with store.transaction() as tx:
        tx.defer_moves({t.id: t for t in tx.tasks()})
        with pytest.raises(IllegalTransitionError, match="cannot move from pending to running"):
            tx.move(a, S.RUNNING)


def test_a_known_row_saves_the_read_and_falls_back_when_stale(store: Store) -> None:
    (a,) = add(store, 1)
    with store.transaction() as tx:
        stale = tx.get(a)
        tx.move(a, S.LAUNCHING, host="h", run_id="r1", task=stale)
    with store.transaction() as tx:
        # The caller's copy says pending; the file says launching: decided again on the file.
        moved = tx.move(a, S.RUNNING, run_id="r1", task=stale)
    assert moved is not None and store.get(a).state is S.RUNNING


_MOVE_FIELDS: dict[TaskState, dict[str, Any]] = {
    S.RUNNING: {},
    S.SUCCEEDED: {"exit_code": 0},
    S.FAILED: {"exit_code": 1, "reason": "exit 1"},
    S.CANCELLED: {"reason": "cancelled by user"},
    S.LOST: {"losses": 1},
    S.PENDING: {"reason": "again"},
}


@settings(max_examples=5, deadline=None)
@given(st.lists(st.sampled_from(list(_MOVE_FIELDS)), min_size=1, max_size=6))
def test_a_batch_ends_where_single_moves_end(targets: list[TaskState]) -> None:
    """Batched and one-by-one moves of the same requests leave the same rows and attempts."""
    with tempfile.TemporaryDirectory() as tmp:
        results = [_moved(Store(Path(tmp) / f"{how}.duckdb"), targets, how) for how in "bs"]
    assert results[0] == results[1]


def _moved(store: Store, targets: list[TaskState], how: str) -> tuple[list[Any], list[Any]]:
    ids = add(store, len(targets))
    reqs = [MoveRequest(i, s, f"r{i}", _MOVE_FIELDS[s]) for i, s in zip(ids, targets, strict=True)]
    with store.transaction() as tx:
        tx.move_many([launch_req(i) for i in ids])
        if how == "b":
            tx.move_many(reqs)
        else:
            for r in reqs:
                tx.move(r.task_id, r.new, run_id=r.run_id, **r.fields)
        rows = [t.to_json() for t in tx.tasks()]
        tries = [[(a.outcome, a.exit_code, a.reason) for a in tx.attempts(i)] for i in ids]
    for row in rows:
        for stamp in ("created_at", "started_at", "finished_at"):
            row.pop(stamp)
    return rows, tries


def test_a_rounds_slurm_job_ids_are_written_with_its_moves(store: Store) -> None:
    # A round of 1,000 SLURM launch replies: one UPDATE for their job ids after the moves,
    # not a flush of the deferred moves and a statement per report.
    a, b, c = add(store, 3)
    with store.transaction() as tx:
        tx.move_many([launch_req(a), launch_req(b), launch_req(c)])
    with store.transaction() as tx:
        tx.defer_moves({t.id: t for t in tx.tasks()})
        for task_id in (a, b, c):
            tx.move(task_id, S.RUNNING, run_id=f"r{task_id}")
            tx.set_job(task_id, f"r{task_id}", f"7_{task_id}", "SLURM job pending (Priority)")
        assert tx._deferred, "set_job wrote the round's deferred moves"
        tx.move(b, S.SUCCEEDED, run_id=f"r{b}", exit_code=0)  # ended in the same round
        tx.set_job(c, "stale-run", "8_0", "not this run")  # fenced by its run id
    got = {t.id: (t.state, t.job_id, t.reason) for t in store.tasks()}
    assert got[a] == (S.RUNNING, f"7_{a}", "SLURM job pending (Priority)")
    assert got[b][:2] == (S.SUCCEEDED, f"7_{b}") and got[b][2] != "SLURM job pending (Priority)"
    assert got[c] == (S.RUNNING, f"7_{c}", "SLURM job pending (Priority)")
    with store.transaction() as tx:  # outside a round: written at once
        tx.set_job(a, f"r{a}", f"7_{a}", None)
        assert tx.get(a).reason is None
