"""Dependencies in the queue file: applies ``core.deps`` inside the transaction that finishes
a task, before it commits, so no dispatcher need be running for a waiting task to be cancelled.

``settle`` looks at the pending tasks that wait for a task that reached a final state in this
transaction, and at tasks that entered pending in it (added, retried, requeued): each is
cancelled when its condition can no longer hold (through ``Txn.move_many``, so the cancel is
itself a finished task and the rule cascades down chains), or gets the reason "waits for task
N". ``brought_back`` finds the tasks a retry brings back with the tasks retried;
``waiting_on`` the pending tasks that wait for given ones (submitted ahead to a cluster);
``deps_met`` whether a task's dependencies all allow it to start now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dispatcher.core.deps import deps_of, verdict, waiting_reason
from dispatcher.core.models import Task, TaskState
from dispatcher.store.move import Mover, MoveRequest
from dispatcher.store.schema import TASK_COLUMNS, task_from_row

S = TaskState
#: SQL condition: the task has dependencies of some kind.
HAS_DEPS = "(len(after) > 0 OR len(after_any) > 0 OR len(after_failed) > 0)"
_WAITS = waiting_reason(0).removesuffix("0")


def settle(tx: Mover, *, everything: bool = False) -> list[tuple[int, str]]:
    """Apply the dependency rule to the pending tasks this transaction may have changed (every
    pending task with dependencies when ``everything``); the (id, reason) of each task it
    cancelled, in order."""
    cancelled: list[tuple[int, str]] = []
    while tx.finished or tx.entered or everything:
        finished = sorted(tx.finished) if tx.waiters else []
        entered = sorted(tx.entered)
        tx.finished.clear()
        tx.entered.clear()
        if not (finished or entered or everything):
            break
        scope = (
            "true"
            if everything
            else (
                "(id IN (SELECT unnest(?::BIGINT[]))"
                " OR list_has_any(list_concat(after, after_any, after_failed), ?::BIGINT[]))"
            )
        )
        everything = False
        rows = tx.con.execute(
            "SELECT id, after, after_any, after_failed, reason FROM tasks"
            f" WHERE state = 'pending' AND {HAS_DEPS} AND {scope} ORDER BY id",
            [] if scope == "true" else [entered, finished],
        ).fetchall()
        if not rows:
            continue
        named = sorted({d for r in rows for d in (*r[1], *r[2], *r[3])})
        states = states_of(tx, named)
        moves: list[MoveRequest] = []
        reasons: dict[int, str | None] = {}
        for task_id, after, after_any, after_failed, reason in rows:
            v = verdict(deps_of(after, after_any, after_failed), states)
            if v.blocked_by is not None and v.reason is not None:
                why = {"reason": v.reason, "cancelled_by": v.blocked_by}
                moves.append(MoveRequest(task_id, S.CANCELLED, None, why))
                cancelled.append((task_id, v.reason))
            elif v.waiting_for is not None:
                if reason != waiting_reason(v.waiting_for):
                    reasons[task_id] = waiting_reason(v.waiting_for)
            elif reason is not None and reason.startswith(_WAITS):
                reasons[task_id] = None  # ready now: placement says why, if it must wait
        tx.move_many(moves)  # these are finished tasks too: the next round looks at theirs
        _set_reasons(tx, reasons)
    return cancelled


def _set_reasons(tx: Mover, reasons: Mapping[int, str | None]) -> None:
    if reasons:
        tx.con.execute(
            "UPDATE tasks SET reason = v.reason FROM (SELECT unnest(?::BIGINT[]) AS id,"
            " unnest(?::VARCHAR[]) AS reason) v WHERE tasks.id = v.id",
            [list(reasons), list(reasons.values())],
        )


def brought_back(tx: Mover, ids: Iterable[int]) -> list[int]:
    """The cancelled tasks that the outcome of a task of ``ids`` cancelled, and those that
    theirs cancelled, and so on (not those of ``ids`` themselves); sorted."""
    rows = tx.con.execute(
        "WITH RECURSIVE back(id) AS (SELECT id FROM tasks WHERE state = 'cancelled'"
        " AND cancelled_by IN (SELECT unnest(?::BIGINT[]))"
        " UNION SELECT t.id FROM tasks t JOIN back b ON t.cancelled_by = b.id"
        " WHERE t.state = 'cancelled') SELECT id FROM back ORDER BY id",
        [sorted(set(ids))],
    ).fetchall()
    chosen = set(ids)
    return [r[0] for r in rows if r[0] not in chosen]


def waiting_on(
    tx: Mover, ids: Iterable[int], limit: int
) -> tuple[list[Task], dict[int, TaskState]]:
    """The pending tasks (at most ``limit``, priority first, then id) with a dependency among
    ``ids``, and the state of every task they depend on."""
    rows = tx.con.execute(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'pending' AND {HAS_DEPS}"
        " AND list_has_any(list_concat(after, after_any, after_failed), ?::BIGINT[])"
        " ORDER BY priority DESC, id LIMIT ?",
        [sorted(set(ids)), max(0, limit)],
    ).fetchall()
    tasks = [task_from_row(r) for r in rows]
    named = sorted({d for t in tasks for d in (*t.after, *t.after_any, *t.after_failed)})
    states = states_of(tx, named)
    return tasks, states


def deps_met(tx: Mover, task: Task) -> bool:
    """Whether every dependency of ``task`` allows it to start now (``core.deps.verdict``)."""
    deps = deps_of(task.after, task.after_any, task.after_failed)
    if not deps:
        return True
    return verdict(deps, states_of(tx, sorted({d for _, d in deps}))).ready


def states_of(tx: Mover, ids: list[int]) -> dict[int, TaskState]:
    """The state of each task of ``ids`` still in the queue."""
    rows = tx.con.execute(
        "SELECT id, state FROM tasks WHERE id IN (SELECT unnest(?::BIGINT[]))", [ids]
    ).fetchall()
    return {i: S(state) for i, state in rows}
