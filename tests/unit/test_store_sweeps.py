"""The store's side of sweeps: batch, max_running and outputs columns, their migration, and the
per-sweep cap on ``pending_candidates``. Real DuckDB files."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from dispatcher.core.batch import TaskBatch
from dispatcher.core.models import NewTask, TaskState
from dispatcher.core.sweep import grid_from_items
from dispatcher.store.queue import Store
from dispatcher.store.schema import MIGRATIONS, SCHEMA_VERSION
from dispatcher.store.suspensions import suspend_host, suspended_hosts

S = TaskState


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "q.duckdb", lock_timeout=10)


def test_batch_max_running_and_outputs_round_trip(store: Store) -> None:
    grid = grid_from_items(["x=1,2,3"])  # rendered by DuckDB
    first = store.add_batch(
        TaskBatch("run %{x}", [grid], name="s", max_running=2, outputs=("out/*.json", "m.txt"))
    ).ids
    listed = store.add_batch(TaskBatch("run %{x}", [[{"x": 9}]])).ids  # rendered in Python
    (direct,) = store.add([NewTask({}, "d", "d", max_running=1, outputs=("a/*",))]).ids
    tasks = {t.id: t for t in store.tasks()}
    assert [tasks[i].batch for i in first] == [first[0]] * 3
    assert {(tasks[i].max_running, tasks[i].outputs, tasks[i].sweep) for i in first} == {
        (2, ("out/*.json", "m.txt"), "s")
    }
    assert (tasks[listed[0]].max_running, tasks[listed[0]].outputs) == (None, ())
    assert tasks[listed[0]].sweep == f"batch {listed[0]}"
    assert (tasks[direct].batch, tasks[direct].max_running, tasks[direct].outputs) == (
        direct, 1, ("a/*",),
    )  # fmt: skip
    assert tasks[first[0]].to_json()["outputs"] == ["out/*.json", "m.txt"]


def test_skip_existing_keeps_the_batch_id_of_the_first_new_task(store: Store) -> None:
    store.add_batch(TaskBatch("run %{x}", [grid_from_items(["x=1,2"])]))
    again = store.add_batch(TaskBatch("run %{x}", [grid_from_items(["x=1,2,3,4"])]),
                            skip_existing=True).ids  # fmt: skip
    assert [t.batch for t in store.tasks(ids=again)] == [again[0]] * 2


def test_a_version_1_queue_is_migrated_and_keeps_its_tasks(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for statement in MIGRATIONS[0]:
        con.execute(statement)
    con.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
    con.execute(
        "INSERT INTO tasks (id, state, args, template, command, created_at, name)"
        " VALUES (4, 'pending', '{}', 'x', 'x', now()::TIMESTAMP, NULL)"
    )
    con.execute("UPDATE meta SET value = 5 WHERE key = 'next_id'")
    con.close()
    store = Store(path, lock_timeout=10)
    (old,) = store.tasks()
    assert (old.id, old.batch, old.max_running, old.outputs, old.sweep) == (
        4,
        4,
        None,
        (),
        "batch 4",
    )
    (new,) = store.add_batch(TaskBatch("y", max_running=1)).ids
    assert new == 5 and store.get(new).max_running == 1
    assert store.queue_id() > 0  # given by the migration, as a new file gets one
    con = duckdb.connect(str(path))
    version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    con.close()
    assert version == (SCHEMA_VERSION,) and SCHEMA_VERSION >= 2


def test_pending_candidates_hold_at_most_k_of_a_throttled_sweep(store: Store) -> None:
    # 50 high-priority tasks capped at 2 must not crowd the other sweep out of a small limit.
    store.add_batch(TaskBatch("a %{i}", [grid_from_items([f"i={','.join(map(str, range(50)))}"])],
                              name="big", priority=9, max_running=2))  # fmt: skip
    others = store.add_batch(TaskBatch("b %{i}", [grid_from_items(["i=1,2,3"])])).ids
    unnamed = store.add_batch(TaskBatch("c %{i}", [grid_from_items(["i=1,2,3"])], max_running=1))
    with store.transaction() as tx:
        got = tx.pending_candidates(limit=10)
    assert [t.name for t in got[:2]] == ["big", "big"] and len(got) == 2 + 3 + 1
    assert [t.id for t in got[2:5]] == others and got[5].id == unnamed.ids[0]
    # Same name, another add: one sweep, one cap.
    store.add_batch(TaskBatch("a2 %{i}", [grid_from_items(["i=1,2"])], name="big", priority=9,
                              max_running=2))  # fmt: skip
    with store.transaction() as tx:
        assert sum(t.name == "big" for t in tx.pending_candidates(limit=100)) == 2


def test_a_throttled_sweep_moves_past_tasks_whose_dependencies_failed(store: Store) -> None:
    (gate,) = store.add([NewTask({}, "gate", "gate")]).ids
    with store.transaction() as tx:
        tx.move(gate, S.CANCELLED)
    # The blocked task comes first in the sweep's order; the cap of 1 must skip it, not stop at it.
    store.add([NewTask({}, "a", "a", name="s", max_running=1, after=(gate,))])
    (free,) = store.add([NewTask({}, "b", "b", name="s", max_running=1)]).ids
    with store.transaction() as tx:
        assert [t.id for t in tx.pending_candidates(limit=10)] == [free]


@pytest.mark.parametrize("suspended_before", [False, True])
def test_a_version_2_queue_migrates_with_or_without_its_host_status_table(
    tmp_path: Path, suspended_before: bool
) -> None:
    """Version 2 made ``host_status`` on its first suspension only; both kinds of file open."""
    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    for step in MIGRATIONS[:2]:
        for statement in step:
            con.execute(statement)
    con.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
    if suspended_before:
        con.execute(
            "CREATE TABLE host_status (host VARCHAR PRIMARY KEY,"
            " suspended_at TIMESTAMP NOT NULL, reason VARCHAR NOT NULL)"
        )
        con.execute("INSERT INTO host_status VALUES ('gpu-a', now()::TIMESTAMP, 'broken')")
    con.close()
    store = Store(path, lock_timeout=10)
    with store.transaction() as tx:
        hosts = suspended_hosts(tx)
        assert list(hosts) == (["gpu-a"] if suspended_before else [])
        suspend_host(tx, "gpu-b", "failures")
    with store.transaction() as tx:
        assert "gpu-b" in suspended_hosts(tx)
    assert store.queue_id() > 0
