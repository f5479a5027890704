"""The DuckDB store on real files: schema, adds, the one state-changing function, locking."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.config.paths import (
    dispatch_lock,
    dispatcher_running,
    lock_path,
    logs_dir,
    resolve_db_path,
)
from dispatcher.core.identity import canonical_args
from dispatcher.core.models import NewTask, TaskState
from dispatcher.core.sweep import Grid, grid_from_items
from dispatcher.errors import (
    DispatcherRunningError,
    IllegalTransitionError,
    StoreError,
    StoreLockedError,
    StoreVersionError,
    TaskNotFoundError,
    TemplateError,
    UsageError,
)
from dispatcher.store import add as store_add
from dispatcher.store import file as store_module
from dispatcher.store.queue import Store, TaskBatch
from dispatcher.store.schema import SCHEMA_VERSION

S = TaskState


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "q.duckdb", lock_timeout=30)


def add(store: Store, n: int = 1, template: str = "run %{i}", **kw: Any) -> list[int]:
    return store.add_batch(TaskBatch(template, [[{"i": i} for i in range(n)]], **kw)).ids


def launch(store: Store, task_id: int, run_id: str = "r1", host: str = "h") -> None:
    with store.transaction() as tx:
        tx.move(task_id, S.LAUNCHING, host=host, run_id=run_id, gpu_ids=[0])


def sql(store: Store, query: str) -> list[tuple[Any, ...]]:
    with store.transaction() as tx:
        return list(tx.con.execute(query).fetchall())


# The file.


def test_new_file_is_private_and_versioned(tmp_path: Path) -> None:
    store = Store.open_default(tmp_path / "sub" / "q.duckdb", create=True)
    assert store.counts() == dict.fromkeys(TaskState, 0)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    meta = sql(store, "SELECT key, value FROM meta ORDER BY key")
    assert meta[0] == ("next_id", 1) and meta[2] == ("schema_version", SCHEMA_VERSION)
    assert meta[1][0] == "queue_id" and meta[1][1] == store.queue_id() > 0
    other = Store.open_default(tmp_path / "other.duckdb", create=True)
    assert other.queue_id() != store.queue_id()  # random: 52 bits
    assert sorted(os.listdir(tmp_path / "sub")) == ["q.duckdb"]  # no temp leftovers


def test_default_location_is_a_private_dot_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store.open_default(None, create=True)
    add(store)
    assert store.path == tmp_path / ".labtasker" / "queue.duckdb"
    assert stat.S_IMODE(os.stat(tmp_path / ".labtasker").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


def test_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_db_path(None) == tmp_path / ".labtasker" / "queue.duckdb"
    monkeypatch.setenv("LABTASKER_DB", "env.duckdb")
    assert resolve_db_path(None) == tmp_path / "env.duckdb"
    assert resolve_db_path(Path("flag.duckdb")) == tmp_path / "flag.duckdb"


def test_one_dispatcher_per_queue(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    assert not dispatcher_running(db)
    with dispatch_lock(db):
        assert dispatcher_running(db)
        who = f"another dispatcher (pid {os.getpid()} on {socket.gethostname()})"
        with pytest.raises(DispatcherRunningError, match=re.escape(who)), dispatch_lock(db):
            pass
        assert dispatcher_running(db)  # the refused attempt did not break the holder's lock
    assert not dispatcher_running(db)
    assert stat.S_IMODE(os.stat(lock_path(db)).st_mode) == 0o600
    assert (lock_path(db).name, logs_dir(db).name) == ("q.duckdb.dispatch.lock", "q.logs")


def test_a_newer_schema_is_refused(store: Store) -> None:
    add(store)
    with store.transaction() as tx:
        tx.con.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(StoreVersionError, match=r"version 99, written by a newer labtasker"):
        store.counts()


def test_a_file_that_is_not_duckdb_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 100)
    with pytest.raises(StoreError, match=f"{path} is not a labtasker queue"):
        Store(path).counts()
    assert path.read_text() == "hello\n" * 100


def test_a_foreign_duckdb_file_is_refused_and_an_empty_one_adopted(tmp_path: Path) -> None:
    foreign, empty = tmp_path / "other.db", tmp_path / "empty.db"
    with duckdb.connect(str(foreign)) as con:
        con.execute("CREATE TABLE sales (x INT)")
    duckdb.connect(str(empty)).close()
    with pytest.raises(StoreError, match="DuckDB database but not a labtasker queue"):
        Store(foreign).counts()
    assert add(Store(empty)) == [1]


def test_lock_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Store(Path("x")).lock_timeout == 120
    monkeypatch.setenv("LABTASKER_LOCK_TIMEOUT", "2.5")
    assert Store(Path("x")).lock_timeout == 2.5
    monkeypatch.setenv("LABTASKER_LOCK_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="LABTASKER_LOCK_TIMEOUT='soon'"):
        Store(Path("x"))


@pytest.fixture
def holder(store: Store) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the queue file open until its stdin closes."""
    add(store)
    code = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
        " sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(store.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
        proc.kill()


def test_a_locked_file_times_out_naming_file_and_holder(
    store: Store, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(StoreLockedError) as err:
        Store(store.path, lock_timeout=0.2).counts()
    assert str(store.path) in str(err.value) and f"PID {holder.pid}" in str(err.value)


def test_a_blocked_transaction_goes_through_once_the_file_is_free(
    store: Store, holder: subprocess.Popen[str]
) -> None:
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(add(store)))
    worker.start()
    assert holder.stdin is not None
    holder.stdin.close()
    worker.join(timeout=60)
    assert done == [[2]]


def test_nested_transactions_in_one_thread_are_refused(store: Store) -> None:
    with store.transaction(), pytest.raises(StoreError, match="already open"):
        store.counts()


def test_a_failed_transaction_changes_nothing(store: Store) -> None:
    add(store, 3)
    with pytest.raises(IllegalTransitionError), store.transaction() as tx:
        tx.move(1, S.CANCELLED)
        tx.move(2, S.SUCCEEDED)
    assert [t.state for t in store.tasks()] == [S.PENDING] * 3


def test_change_token_moves_on_writes_only(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    add(store)
    before = store.change_token()
    assert before != store.change_token()  # written just now: never trusted as unchanged
    monkeypatch.setattr(store_module, "_RACY_NS", 0)
    quiet = store.change_token()
    store.tasks()
    with store.transaction() as tx:
        tx.set_reasons({1: None})  # no change: nothing written
    assert store.change_token() == quiet
    add(store)
    assert store.change_token() != quiet


# Adding.


def test_ids_are_contiguous_and_never_reused(store: Store) -> None:
    assert add(store, 3) == [1, 2, 3]
    assert store.remove([2, 3]) == [2, 3]
    assert add(store, 2) == [4, 5]
    assert [t.id for t in store.tasks()] == [1, 4, 5]


def test_added_tasks_keep_everything_given(store: Store) -> None:
    (tid,) = add(store, name="n", priority=-3, max_attempts=2, timeout=1.5, gpus=2)
    (dep,) = store.add([NewTask({"x": [1]}, "t", "t", name="m", after=(tid,))]).ids
    t, d = store.get(tid), store.get(dep)
    assert (t.name, t.priority, t.max_attempts, t.timeout, t.gpus, t.attempt) == (
        "n",
        -3,
        2,
        1.5,
        2,
        0,
    )
    assert t.created_at is not None and t.created_at.tzinfo is UTC
    assert abs(t.created_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert (d.args, d.after, d.name, d.state) == ({"x": [1]}, [tid], "m", S.PENDING)


def test_after_must_name_existing_tasks(store: Store) -> None:
    with pytest.raises(TaskNotFoundError, match=r"--after names task.*7"):
        add(store, after=(7,))
    assert store.tasks() == []


def test_duplicates_are_reported_and_optionally_skipped(store: Store) -> None:
    add(store, 2)  # run 0, run 1
    batch = TaskBatch("run %{i}", [grid_from_items(["i=5,0,6,1"])])
    result = store.add_batch(batch, skip_existing=True)
    assert (result.ids, result.duplicates, result.skipped) == ([3, 4], [], 2)
    assert [t.command for t in store.tasks(ids=[3, 4])] == ["run 5", "run 6"]
    result = store.add_batch(batch)  # the new ids that duplicate queued tasks
    assert (result.ids, result.duplicates, result.skipped) == ([5, 6, 7, 8], [5, 6, 7, 8], 0)
    result = store.add_batch(TaskBatch("run %{i}", [[{"i": 9}, {"i": 1}]]))
    assert (result.ids, result.duplicates) == ([9, 10], [10])


def test_repeats_inside_one_batch_are_dropped(store: Store) -> None:
    add(store)  # run 0
    batch = TaskBatch("run %{i}", [[{"i": 0}, {"i": 1}, {"i": 1}, {"i": 0}, {"i": 1.0}]])
    result = store.add_batch(batch, skip_existing=True)
    assert (result.ids, result.duplicates, result.skipped, result.repeated) == ([2, 3], [], 1, 2)
    assert [t.command for t in store.tasks()] == ["run 0", "run 1", "run 1.0"]
    result = store.add_batch(TaskBatch("run %{i}", [[{"i": 7}, {"i": 7}]]))
    assert (result.ids, result.repeated) == ([4], 1)


def test_identity_is_template_and_args_in_any_key_order(store: Store) -> None:
    store.add_batch(TaskBatch("run %{a}", [[{"a": 1, "b": {"y": 2, "x": 1}, "z": 0}]]))
    same = TaskBatch("run %{a}", [[{"z": 0, "b": {"x": 1, "y": 2}, "a": 1}]])
    assert store.add_batch(same, skip_existing=True).skipped == 1
    # Same command, other args (a key the command does not use): a new task.
    other = TaskBatch("run %{a}", [[{"a": 1, "b": {"x": 1, "y": 2}, "z": 1}]])
    assert store.add_batch(other, skip_existing=True).ids == [2]
    # Same args, other template (rendering the same command): a new task too.
    assert store.add_batch(TaskBatch("run  %{a}", [[{"a": 1}]]), skip_existing=True).ids == [3]


def test_finished_failures_are_not_duplicates(store: Store) -> None:
    add(store)
    store.cancel([1])
    assert store.add_batch(TaskBatch("run %{i}", [[{"i": 0}]])).duplicates == []


def test_a_missing_key_names_the_task_and_adds_nothing(store: Store) -> None:
    batch = TaskBatch("run %{i} %{j}", [[{"i": 1, "j": 1}], [{"i": 1, "j": 2}, {"i": 2}]])
    with pytest.raises(TemplateError, match=r"task 3 of 3: .*%\{j\}"):
        store.add_batch(batch)
    with pytest.raises(TemplateError, match=r"task 1 of 2: .*%\{zz\}"):
        store.add_batch(TaskBatch("%{zz}", [grid_from_items(["a=1,2"])]))
    assert store.tasks() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_attempts": 0}, "max attempts"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"gpus": -1}, "gpus"),
        ({"priority": 2**63}, "priority"),
        ({"name": "a\0b"}, "NUL"),
    ],
)
def test_bad_settings_are_usage_errors(store: Store, change: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        store.add_batch(TaskBatch("x", **change))
    with pytest.raises(UsageError, match=message):
        store.add([NewTask({}, "x", "x", **change)])


def test_args_that_json_cannot_hold_are_refused(store: Store) -> None:
    with pytest.raises(UsageError, match="task 1: args cannot be stored as JSON"):
        store.add_batch(TaskBatch("x", [[{"a": float("nan")}]]))


def test_a_large_grid_is_rendered_in_sql(store: Store) -> None:
    values = ",".join(str(i) for i in range(100))
    batch = TaskBatch("p %{a} %{b}", [grid_from_items([f"a={values}", f"b={values}"])], gpus=1)
    assert store.add_batch(batch).ids == list(range(1, 10_001))
    last = store.get(10_000)
    assert (last.command, last.args, last.gpus) == ("p 99 99", {"a": 99, "b": 99}, 1)
    assert store.counts()[S.PENDING] == 10_000


text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]), max_size=8)
scalar = st.one_of(
    text,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
axis_values = st.lists(st.one_of(scalar, st.lists(scalar, max_size=2)), min_size=1, max_size=3)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fixed=st.dictionaries(st.sampled_from(["f", "g.h", "k"]), scalar, max_size=2),
    a=axis_values,
    zipped=st.lists(st.tuples(scalar, scalar), min_size=1, max_size=2),
)
def test_sql_and_python_rendering_agree(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    fixed: dict[str, Any],
    a: list[Any],
    zipped: list[Any],
) -> None:
    # One store for all examples: each example compares only the rows it added.
    grid = Grid(fixed, (((("a",),), tuple((v,) for v in a)), ((("b",), ("c",)), tuple(zipped))))
    template = "p %{a}%{b} '%{c}' " + " ".join(f"%{{{k}}}" for k in fixed) + " %%"
    by_sql = TaskBatch(template, [grid])
    by_python = TaskBatch(template, [list(grid)])  # a plain list is rendered by Python
    expected, idents = [], []  # a point repeating an earlier one is dropped
    for args, cmd in by_sql.rendered():
        ident = template + "\0" + canonical_args(args)
        if ident not in idents:
            idents.append(ident)
            expected.append((json.dumps(args, separators=(",", ":"), ensure_ascii=False), cmd))
    with store.transaction() as tx:  # one transaction per example keeps this test quick
        hashed = tx.con.execute("SELECT md5_number(unnest(?::VARCHAR[]))", [idents]).fetchall()
        for batch, csv_rows in ((by_sql, 2000), (by_python, 2000), (by_python, 0)):
            monkeypatch.setattr(store_add, "_CSV_ROWS", csv_rows)  # 0: through a CSV file
            ids = tx.add_batch(batch).ids
            rows = tx.con.execute(
                "SELECT args, command, ident FROM tasks WHERE id BETWEEN ? AND ? ORDER BY id",
                [ids[0], ids[-1]],
            ).fetchall()
            assert [r[:2] for r in rows] == expected
            assert [(r[2],) for r in rows] == hashed


# Moving: the one state-changing function.


def test_a_full_attempt_and_its_entry_rules(store: Store) -> None:
    (tid,) = add(store)
    with store.transaction() as tx:
        t = tx.move(tid, S.LAUNCHING, host="gpu-a", run_id="r1", gpu_ids=[2, 3])
        assert t is not None and (t.attempt, t.host, t.gpu_ids, t.run_id) == (
            1,
            "gpu-a",
            [2, 3],
            "r1",
        )
        started = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
        t = tx.move(tid, S.RUNNING, run_id="r1", started_at=started)
        assert t is not None and t.started_at == started and t.finished_at is None
        t = tx.move(tid, S.FAILED, run_id="r1", exit_code=3, result={"loss": 1.5}, reason="exit 3")
        assert t is not None and t.finished_at is not None and t.exit_code == 3
        (attempt,) = tx.attempts(tid)
    assert (attempt.attempt, attempt.run_id, attempt.host, attempt.gpu_ids) == (
        1,
        "r1",
        "gpu-a",
        [2, 3],
    )
    assert (attempt.outcome, attempt.exit_code, attempt.result, attempt.reason) == (
        S.FAILED,
        3,
        {"loss": 1.5},
        "exit 3",
    )
    assert attempt.started_at == started and attempt.finished_at == t.finished_at


def test_a_report_without_times_gets_the_transaction_time(store: Store) -> None:
    (tid,) = add(store)
    launch(store, tid)
    with store.transaction() as tx:
        running = tx.move(tid, S.RUNNING, run_id="r1", started_at=None)
        done = tx.move(tid, S.SUCCEEDED, run_id="r1", finished_at=None, exit_code=0)
        (attempt,) = tx.attempts(tid)
    assert running is not None and running.started_at is not None
    assert done is not None and done.finished_at is not None
    assert attempt.finished_at == done.finished_at


def test_a_result_may_hold_nan(store: Store) -> None:
    (tid,) = add(store)
    launch(store, tid)
    with store.transaction() as tx:
        tx.move(tid, S.FAILED, run_id="r1", result={"loss": float("nan")})
    result = store.get(tid).result
    assert result is not None and math.isnan(result["loss"])


def test_one_row_moves_many_times_in_one_transaction(store: Store) -> None:
    (tid,) = add(store)
    with store.transaction() as tx:
        for n in range(1, 4):
            tx.move(tid, S.LAUNCHING, host="h", run_id=f"r{n}", gpu_ids=[n])
            tx.move(tid, S.RUNNING, run_id=f"r{n}")
            tx.move(tid, S.LOST, run_id=f"r{n}", losses=n)
            tx.move(tid, S.PENDING)
        assert len(tx.attempts(tid)) == 3
    t = store.get(tid)
    assert (t.state, t.attempt, t.losses, t.host, t.gpu_ids, t.run_id) == (
        S.PENDING,
        3,
        3,
        None,
        None,
        None,
    )


def test_stale_reports_are_fenced_off_by_run_id(store: Store) -> None:
    (tid,) = add(store)
    launch(store, tid, run_id="new")
    with store.transaction() as tx:
        assert tx.move(tid, S.FAILED, run_id="old", exit_code=1) is None
        moved = tx.move(tid, S.RUNNING, run_id="new")
    assert moved is not None and store.get(tid).state is S.RUNNING


def test_launching_needs_host_and_run_id(store: Store) -> None:
    (tid,) = add(store)
    with (
        pytest.raises(IllegalTransitionError, match="needs a host and a run_id"),
        store.transaction() as tx,
    ):
        tx.move(tid, S.LAUNCHING, run_id="r")


def test_an_illegal_move_names_both_states(store: Store) -> None:
    (tid,) = add(store)
    illegal = f"task {tid}: cannot move from pending to running"
    with pytest.raises(IllegalTransitionError, match=illegal), store.transaction() as tx:
        tx.move(tid, S.RUNNING)
    with (
        pytest.raises(TaskNotFoundError, match="task 99 not in the queue"),
        store.transaction() as tx,
    ):
        tx.move(99, S.RUNNING)


def test_a_failed_launch_goes_back_to_pending_keeping_its_reason(store: Store) -> None:
    (tid,) = add(store)
    launch(store, tid)
    with store.transaction() as tx:
        tx.move(tid, S.PENDING, run_id="r1", reason="launch failed")
        (attempt,) = tx.attempts(tid)
    t = store.get(tid)
    assert (t.state, t.reason, t.host, t.attempt, t.cancel_requested) == (
        S.PENDING,
        "launch failed",
        None,
        1,
        False,
    )
    assert (attempt.outcome, attempt.host) == (S.PENDING, "h")


def test_candidates_by_priority_then_id_with_dependencies(store: Store) -> None:
    a, b, c = add(store, 3)
    (hi,) = add(store, template="hi", priority=5)
    (dep,) = add(store, template="dep", priority=9, after=(a, b))
    with store.transaction() as tx:
        assert [t.id for t in tx.pending_candidates(10)] == [hi, a, b, c]
        assert [t.id for t in tx.pending_candidates(2)] == [hi, a]
    for tid in (a, b):
        launch(store, tid, run_id=f"r{tid}")
        with store.transaction() as tx:
            tx.move(tid, S.SUCCEEDED, run_id=f"r{tid}", exit_code=0)
            ready = [t.id for t in tx.pending_candidates(10)]
        assert (dep in ready) == (tid == b)


def test_set_reasons_touches_only_pending_tasks(store: Store) -> None:
    a, b = add(store, 2)
    launch(store, b)
    with store.transaction() as tx:
        tx.set_reasons({a: "no free GPU", b: "no free GPU"})
    assert (store.get(a).reason, store.get(b).reason) == ("no free GPU", None)


# User operations.


def test_cancel_pending_now_and_active_through_the_dispatcher(store: Store) -> None:
    a, b, c, d = add(store, 4)
    launch(store, b)
    launch(store, c, run_id="r2")
    with store.transaction() as tx:
        tx.move(c, S.SUCCEEDED, run_id="r2")
    result = store.cancel([a, b, c])
    assert (result.cancelled, result.requested, result.skipped) == ([a], [b], [(c, S.SUCCEEDED)])
    t = store.get(a)
    assert (t.state, t.reason, t.finished_at is not None) == (
        S.CANCELLED,
        "cancelled by user",
        True,
    )
    assert store.get(b).cancel_requested and store.get(b).state is S.LAUNCHING
    assert store.cancel(states=[S.PENDING]).cancelled == [d]
    with pytest.raises(TaskNotFoundError, match="42"):
        store.cancel([a, 42])
    with pytest.raises(UsageError, match="give task ids or --state"):
        store.cancel()


def test_retry_sends_finished_tasks_back_keeping_the_attempt_count(store: Store) -> None:
    a, b = add(store, 2)
    launch(store, a)
    with store.transaction() as tx:
        tx.move(a, S.FAILED, run_id="r1", exit_code=2, result={"x": 1})
    store.cancel([b])
    assert store.retry(states=[S.FAILED, S.CANCELLED]) == [a, b]
    t = store.get(a)
    assert (t.state, t.attempt, t.exit_code, t.result, t.finished_at) == (
        S.PENDING,
        1,
        None,
        None,
        None,
    )
    with store.transaction() as tx:
        assert tx.attempts(a)[0].exit_code == 2  # history stays
    with pytest.raises(IllegalTransitionError, match=f"task {a} is pending; only failed"):
        store.retry([a])


def test_update_rerenders_pending_tasks_only(store: Store) -> None:
    a, b = store.add_batch(
        TaskBatch(
            "run %{i} --lr %{opt.lr}", [[{"i": 0, "opt": {"lr": 1}}, {"i": 1, "opt": {"lr": 1}}]]
        )
    ).ids
    assert store.update([a], args={"opt": {"lr": 0.5}}, priority=4, name="x") == [a]
    t = store.get(a)
    assert (t.args, t.command, t.priority, t.name) == (
        {"i": 0, "opt": {"lr": 0.5}},
        "run 0 --lr 0.5",
        4,
        "x",
    )
    store.update([a, b], template="go %{i}")
    assert [t.command for t in store.tasks()] == ["go 0", "go 1"]
    with pytest.raises(TemplateError, match=f"task {a}: .*%{{nope}}"):
        store.update([a], template="%{nope}")
    launch(store, b)
    with pytest.raises(IllegalTransitionError, match=f"task {b} is launching; only pending"):
        store.update([a, b], priority=1)
    assert store.get(a).priority == 4


def test_remove_refuses_active_tasks_and_needed_dependencies(store: Store) -> None:
    a, b, c = add(store, 3)
    (dep,) = add(store, template="dep", after=(a,))
    launch(store, b)
    with pytest.raises(IllegalTransitionError, match=f"task {b} is launching; cancel it first"):
        store.remove([b, c])
    with pytest.raises(UsageError, match=f"task {a} cannot be removed: pending task {dep} waits"):
        store.remove([a])
    assert store.remove([a, dep]) == [a, dep]
    assert store.remove(states=[S.PENDING]) == [c]
    assert [t.id for t in store.tasks()] == [b]
