"""A busy dispatcher's store shortcuts: the file kept attached between transactions (and
released for other processes), ``Txn.tally``, the plain candidate query, merged moves."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.config.paths import wanted_path
from dispatcher.core.models import NewTask, TaskState
from dispatcher.store.queue import MoveRequest, Store

S = TaskState


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "q.duckdb", lock_timeout=30)
    yield s
    s.release()


def add(store: Store, n: int, **kw: object) -> list[int]:
    tasks = [NewTask({"i": i}, "run %{i}", f"run {i}", **kw) for i in range(n)]  # type: ignore[arg-type]
    return store.add(tasks).ids


def other_process_counts(path: Path) -> subprocess.CompletedProcess[str]:
    """Another process reads the queue, giving up at once if the file is locked."""
    code = textwrap.dedent(
        f"""
        from dispatcher.store.queue import Store
        print(sum(Store({str(path)!r}, lock_timeout=0).counts().values()))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_keep_leaves_the_file_attached_until_release(store: Store) -> None:
    add(store, 2)
    with store.transaction() as tx:
        tx.linger = 60.0
        first = tx.attachment
    with store.transaction() as tx:
        second = tx.attachment
        tx.linger = 60.0
    assert second == (first[0], first[1] + 1)  # same attachment, next transaction
    locked = other_process_counts(store.path)
    assert locked.returncode != 0 and "locked" in locked.stderr
    store.release()
    free = other_process_counts(store.path)
    assert free.returncode == 0, free.stderr
    assert free.stdout.strip() == "2"
    with store.transaction() as tx:
        assert tx.attachment[0] != first[0]  # attached anew: others may have written


def test_without_keep_each_transaction_attaches_anew(store: Store) -> None:
    with store.transaction() as tx:
        first = tx.attachment
    with store.transaction() as tx:
        assert tx.attachment[0] != first[0]
    assert other_process_counts(store.path).returncode == 0


def test_keep_ends_once_held_that_long(store: Store) -> None:
    with store.transaction() as tx:
        tx.linger = 1e-9  # already held longer than this at commit: detached
        first = tx.attachment
    with store.transaction() as tx:
        assert tx.attachment[0] != first[0]


def test_failed_transaction_detaches(store: Store) -> None:
    with store.transaction() as tx:
        tx.linger = 60.0
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.linger = 60.0
        raise RuntimeError("boom")
    assert other_process_counts(store.path).returncode == 0


def test_tally_counts_dependencies_throttles_and_cancel_flags(store: Store) -> None:
    ids = add(store, 4)
    with store.transaction() as tx:
        t = tx.tally()
        assert t.counts[S.PENDING] == 4 and t.pending_after == 0 and t.pending_throttled == 0
        tx.move(ids[0], S.LAUNCHING, run_id="r0", host="h", gpu_ids=[])
        tx.move(ids[1], S.LAUNCHING, run_id="r1", host="h", gpu_ids=[])
    store.cancel([ids[0], ids[2]])
    add(store, 1, after=(ids[3],))
    add(store, 2, max_running=1)
    with store.transaction() as tx:
        t = tx.tally()
    assert t.counts[S.LAUNCHING] == 2 and t.counts[S.CANCELLED] == 1
    assert t.counts[S.PENDING] == 4
    assert (t.pending_after, t.pending_throttled) == (1, 2)
    assert t.cancel_requested == frozenset({ids[0]})


def test_plain_candidates_match_the_full_query_without_dependencies(store: Store) -> None:
    ids = add(store, 6)
    store.update([ids[4]], priority=5)
    with store.transaction() as tx:
        full = [t.id for t in tx.pending_candidates(4)]
        plain = [t.id for t in tx.pending_candidates(4, plain=True)]
    assert plain == full == [ids[4], ids[0], ids[1], ids[2]]


def test_several_moves_of_one_task_are_one_write_with_every_attempt(store: Store) -> None:
    ids = add(store, 2, max_attempts=3)
    with store.transaction() as tx:
        reqs = [
            MoveRequest(ids[0], S.LAUNCHING, "a1", {"host": "h", "gpu_ids": [0]}),
            MoveRequest(ids[1], S.LAUNCHING, "b1", {"host": "g", "gpu_ids": []}),
            MoveRequest(ids[0], S.RUNNING, "a1"),
            MoveRequest(ids[0], S.FAILED, "a1", {"exit_code": 3}),
            MoveRequest(ids[0], S.PENDING, None, {"reason": "retry"}),
            MoveRequest(ids[0], S.LAUNCHING, "a2", {"host": "g", "gpu_ids": [1]}),
            MoveRequest(ids[0], S.RUNNING, "stale"),  # fenced: an old attempt's report
        ]
        out = tx.move_many(reqs)
    assert out[-1] is None
    a, b = store.get(ids[0]), store.get(ids[1])
    assert (a.state, a.run_id, a.host, a.gpu_ids, a.attempt) == (S.LAUNCHING, "a2", "g", [1], 2)
    assert a.exit_code is None and a.started_at is None
    assert (b.state, b.run_id, b.host, b.gpu_ids) == (S.LAUNCHING, "b1", "g", [])
    with store.transaction() as tx:
        attempts = tx.attempts(ids[0])
    assert [(x.run_id, x.outcome, x.exit_code, x.host) for x in attempts] == [
        ("a1", S.FAILED, 3, "h")
    ]


def test_a_process_waiting_for_a_kept_file_asks_for_it(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    store = Store(db, lock_timeout=30)
    with store.transaction() as tx:
        tx.linger = 60.0  # a busy dispatcher's attachment, kept after the commit
    assert not store.wanted()
    code = "from dispatcher.store.queue import Store; "
    code += f"print(Store({str(db)!r}, lock_timeout=30).counts())"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not store.wanted():
            assert child.poll() is None and time.monotonic() < deadline, "no wish seen"
            time.sleep(0.01)
        assert wanted_path(db).exists()
        store.release()
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0 and "PENDING" in out, out
    assert not wanted_path(db).exists()  # removed by the process that waited, once done


def test_a_rounds_delta_matches_the_counts_read_after_its_moves(store: Store) -> None:
    # The dispatcher skips the tally when nobody else wrote: its counts are the last ones
    # plus Mover.delta, so delta must equal what a fresh read finds, requeues included.
    ids = add(store, 5, max_attempts=2)
    with store.transaction() as tx:
        tx.move(ids[0], S.LAUNCHING, run_id="a", host="h")
        tx.move(ids[1], S.LAUNCHING, run_id="b", host="h")
        tx.move(ids[1], S.RUNNING, run_id="b")
    with store.transaction() as tx:
        before = tx.tally().counts
        tx.defer_moves({t.id: t for t in tx.tasks(ids=ids[:2])})
        tx.move(ids[0], S.RUNNING, run_id="a")
        tx.move(ids[0], S.SUCCEEDED, run_id="a", exit_code=0)
        tx.move(ids[1], S.FAILED, run_id="b", exit_code=1)
        assert not tx.to_pending
        tx.move(ids[1], S.PENDING, reason="retry")  # a requeue: the pending rows changed
        tx.hold({t.id: t for t in tx.tasks(ids=ids[2:3])})
        tx.move(ids[2], S.LAUNCHING, run_id="c", host="h")
        assert tx.to_pending
        after = tx.tally().counts  # a read: the deferred moves are written first
        assert {s: before[s] + tx.delta.get(s, 0) for s in S} == after
    assert after[S.SUCCEEDED] == 1 and after[S.PENDING] == 3 and after[S.LAUNCHING] == 1
