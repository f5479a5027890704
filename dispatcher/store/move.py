"""Moves: ``plan_move`` decides one state change without I/O, and ``Mover`` (the base of
``store.txn.Txn``) writes them: ``move``, the only code that changes a task's state one task at a
time, ``move_many``, its set-based form, and the deferred mode the dispatcher batches its own
moves with. Every move passes ``check_transition`` and the same entry rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dispatcher.core.deps import FINAL_STATES as DEP_FINAL
from dispatcher.core.models import ACTIVE_STATES, Task, TaskState, check_transition
from dispatcher.errors import IllegalTransitionError, StoreError, TaskNotFoundError
from dispatcher.store.schema import (
    TASK_COLUMNS,
    dump_json,
    from_db_time,
    task_from_row,
    to_db_time,
)

S = TaskState
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()
FINISHED = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST})


@dataclass(frozen=True)
class MoveRequest:
    """One state change for ``Txn.move_many``; ``fields`` are ``Txn.move``'s keywords."""

    task_id: int
    new: TaskState
    run_id: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Planned:
    old: Task
    task: Task  # the row after the move
    sets: dict[str, Any]  # column -> value as stored
    attempt_rows: tuple[tuple[Any, ...], ...]  # values for _ATTEMPT_COLS, oldest first

    def then(self, later: _Planned) -> _Planned:
        """This move followed by ``later`` (planned against this one's result) as one write:
        the columns either sets (the later value wins) and both attempts rows."""
        sets = {**self.sets, **later.sets}
        return _Planned(self.old, later.task, sets, self.attempt_rows + later.attempt_rows)


def _merged(plans: Sequence[_Planned]) -> list[_Planned]:
    """One write per task, in the order of each task's first move: its moves of the round
    applied in turn (``_Planned.then``)."""
    merged: dict[int, _Planned] = {}
    for planned in plans:
        before = merged.get(planned.task.id)
        merged[planned.task.id] = planned if before is None else before.then(planned)
    return list(merged.values())


_COL_TYPES = {
    "state": "VARCHAR",
    "host": "VARCHAR",
    "gpu_ids": "INTEGER[]",
    "run_id": "VARCHAR",
    "attempt": "INTEGER",
    "losses": "INTEGER",
    "exit_code": "INTEGER",
    "result": "VARCHAR",
    "reason": "VARCHAR",
    "started_at": "TIMESTAMP",
    "finished_at": "TIMESTAMP",
    "cancel_requested": "BOOLEAN",
    "cancelled_by": "BIGINT",
    "gpu_memory": "BIGINT",
    "min_gpu_memory": "BIGINT",
    "job_id": "VARCHAR",
}
_ATTEMPT_COLS: tuple[str, ...] = ("task_id", "attempt", "run_id", "host", "gpu_ids", "outcome")
_ATTEMPT_COLS += ("exit_code", "result", "started_at", "finished_at", "reason")
_ATTEMPT_TYPES = {**_COL_TYPES, "task_id": "BIGINT", "outcome": "VARCHAR"}


def plan_move(task: Task, req: MoveRequest, now: datetime) -> _Planned | None:
    """Decide one move against ``task`` (its current row) without I/O: None when ``req.run_id``
    fences it off, else the new row, the columns to write and the attempts row; raises
    IllegalTransitionError for a move the lifecycle forbids. ``now`` is naive UTC."""
    new, fields = req.new, dict(req.fields)
    if new is not S.LAUNCHING and req.run_id is not None and req.run_id != task.run_id:
        return None
    if new is S.LAUNCHING:
        if req.run_id is None or fields.get("host") is None:
            raise IllegalTransitionError(
                f"task {task.id}: moving to launching needs a host and a run_id"
            )
        fields["run_id"] = req.run_id
    check_transition(task.id, task.state, new)
    values = {k: to_db(k, v) for k, v in fields.items()}
    sets: dict[str, Any] = {"state": new.value}
    if new is S.PENDING:
        sets.update(dict.fromkeys(("host", "gpu_ids", "run_id", "started_at", "finished_at")))
        sets["job_id"] = None
        sets.update(cancel_requested=False, cancelled_by=None)
    elif new is S.LAUNCHING:
        sets.update(dict.fromkeys(("exit_code", "result", "started_at", "finished_at", "reason")))
        sets["job_id"] = None
        sets["attempt"] = task.attempt + 1
    sets.update(values)
    # Entry times: the one given, or now (a None from a report that lacked it counts as none).
    if new is S.RUNNING:
        sets["started_at"] = values.get("started_at") or now
    if new in FINISHED:
        sets["finished_at"] = values.get("finished_at") or now
    attempt_row = None
    if task.state in ACTIVE_STATES and new not in ACTIVE_STATES:
        old = {
            "attempt": task.attempt,
            "run_id": task.run_id,
            "host": task.host,
            "gpu_ids": task.gpu_ids,
            "exit_code": task.exit_code,
            "result": to_db("result", task.result),
            "started_at": to_db_time(task.started_at),
            "reason": task.reason,
        }
        old.update((k, v) for k, v in values.items() if k in old)
        old.update(task_id=task.id, outcome=new.value)
        old["finished_at"] = values.get("finished_at") or now
        attempt_row = tuple(old[c] for c in _ATTEMPT_COLS)
    changes: dict[str, Any] = {}
    for col, value in sets.items():
        if col in ("started_at", "finished_at"):
            value = from_db_time(value)
        elif col == "result":
            value = None if fields.get("result") is None else dict(fields["result"])
        changes[col] = value
    changes["state"] = new
    rows = () if attempt_row is None else (attempt_row,)
    return _Planned(task, task.replace(**changes), sets, rows)


class Mover:
    """The moving half of ``Txn``: one open transaction's connection, clock and deferred moves."""

    def __init__(self, con: Any, path: Path) -> None:
        self._con = con
        self.path = path
        self._now = datetime.now(UTC).replace(tzinfo=None)
        self._deferred: list[_Planned] | None = None
        self._held: dict[int, Task] = {}
        self._jobs: dict[tuple[int, str], tuple[str | None, str | None]] = {}  # Txn.set_job
        #: After a commit, leave the file attached for this process's next transaction while
        #: it has been attached for less than this many seconds (0: detach, the default).
        self.linger = 0.0
        #: (which attachment of the file, which transaction on it): the same attachment with
        #: the next number means that no other transaction ran in between, here or elsewhere.
        self.attachment = (0, 0)
        #: Tasks per state gained (lost, if negative) by the moves written so far, and whether
        #: any of them entered pending: a caller that knows the counts before can skip a read.
        self.delta: dict[TaskState, int] = {}
        self.to_pending = False
        #: Tasks that reached a final state or entered pending in this transaction: the
        #: tasks waiting for the former, and the latter, are looked at again before commit
        #: (``Txn.settle``, ``store.depends``).
        self.finished: set[int] = set()
        self.entered: set[int] = set()
        #: (id, reason) of the tasks the dependency rule cancelled in this transaction.
        self.settled: list[tuple[int, str]] = []
        #: False: the caller knows that no pending task waits for a task that may finish in
        #: this transaction, so ``Txn.settle`` looks only at the tasks that entered pending.
        self.waiters = True

    @property
    def con(self) -> Any:
        """The DuckDB connection; moves deferred by ``defer_moves`` are written first."""
        if self._deferred or self._jobs:
            self.flush()
        return self._con

    def now(self) -> datetime:
        """This transaction's timestamp (naive UTC, as stored)."""
        return self._now

    def move(
        self,
        task_id: int,
        new: TaskState,
        *,
        run_id: str | None = None,
        task: Task | None = None,
        host: str | None = UNSET,
        gpu_ids: Sequence[int] | None = UNSET,
        attempt: int = UNSET,
        losses: int = UNSET,
        exit_code: int | None = UNSET,
        result: Mapping[str, Any] | None = UNSET,
        reason: str | None = UNSET,
        started_at: datetime | None = UNSET,
        finished_at: datetime | None = UNSET,
        cancel_requested: bool = UNSET,
        gpu_memory: int | None = UNSET,
        min_gpu_memory: int | None = UNSET,
        job_id: str | None = UNSET,
    ) -> Task | None:
        """Move one task to ``new`` (THE state-changing function); returns the updated task.

        ``run_id`` fences: unless ``new`` is launching, a run_id that differs from the task's
        current one means a stale report from an old attempt, and the move is ignored (None).
        Moving to launching requires ``host`` and ``run_id`` (the new attempt's id) and bumps
        ``attempt`` unless given. Entry rules: -> running sets started_at; -> succeeded, failed,
        cancelled or lost sets finished_at; -> pending clears host, gpu_ids, run_id, started_at,
        finished_at and cancel_requested; leaving launching/running writes an attempts row.
        Illegal moves raise IllegalTransitionError naming both states. ``task``, the row as the
        caller holds it, saves reading it; the write checks that its state and run_id still
        hold (else the row is read and the move decided again). In ``defer_moves`` mode a move
        of a held task is checked now and written with the others at the next read or commit.
        """
        given = {
            "host": host,
            "gpu_ids": gpu_ids,
            "attempt": attempt,
            "losses": losses,
            "exit_code": exit_code,
            "result": result,
            "reason": reason,
            "started_at": started_at,
            "finished_at": finished_at,
            "cancel_requested": cancel_requested,
            "gpu_memory": gpu_memory,  # a CUDA out-of-memory retry asks for a bigger GPU
            "min_gpu_memory": min_gpu_memory,
            "job_id": job_id,
        }
        req = MoveRequest(task_id, new, run_id, {k: v for k, v in given.items() if v is not UNSET})
        if self._deferred is not None and task is None:
            task = self._held.get(task_id)
            if task is not None:
                planned = plan_move(task, req, self._now)
                if planned is None:
                    return None
                self._deferred.append(planned)
                self._held[task_id] = planned.task
                self.to_pending = self.to_pending or planned.task.state is TaskState.PENDING
                return planned.task
        if task is not None and task.id == task_id:
            planned = plan_move(task, req, self._now)
            if planned is None:
                # Fenced by the caller's copy; confirm against the file before ignoring it.
                return self.move_many([req])[0]
            if self._write([planned], strict=False):
                return planned.task
        return self.move_many([req])[0]

    def move_many(self, requests: Sequence[MoveRequest]) -> list[Task | None]:
        """Apply many moves with a fixed handful of statements; the result is aligned with
        ``requests``: the task after its move, or None where ``run_id`` fenced it off.

        Each move is checked as ``move`` checks it against the row's current state, read from
        the file in one SELECT. An illegal move raises IllegalTransitionError and nothing is
        written. A task may appear more than once (its moves apply in order, and are written
        as one). All of it is one UPDATE, guarded by every row's expected state and run_id (a
        row found otherwise raises StoreError: the transaction rolls back), and one attempts
        INSERT.
        """
        if not requests:
            return []
        self.flush()
        rows = self._con.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT unnest(?::BIGINT[]))",
            [sorted({r.task_id for r in requests})],
        ).fetchall()
        current = {t.id: t for t in map(task_from_row, rows)}
        plans: list[_Planned] = []
        out: list[Task | None] = []
        for req in requests:
            task = current.get(req.task_id)
            if task is None:
                raise self._not_found(req.task_id)
            planned = plan_move(task, req, self._now)
            if planned is None:
                out.append(None)
                continue
            plans.append(planned)
            current[req.task_id] = planned.task
            out.append(planned.task)
        if plans:
            self._write(_merged(plans), strict=True)
        return out

    def defer_moves(self, held: Mapping[int, Task]) -> None:
        """Batch the moves of tasks in ``held`` (the caller's current copies of their rows).

        Such a move is checked against the held row at once (fencing, transition table) and
        returns the moved task; the writes of all of them go out together, as ``move_many``,
        before the next statement of this transaction (any use of ``con``) or at commit. Any
        row found in another state than held then raises StoreError, and the transaction rolls
        back.
        """
        self.flush()
        self._deferred = []
        self._held = dict(held)

    def hold(self, tasks: Mapping[int, Task]) -> None:
        """Add rows read in this transaction to those ``defer_moves`` holds, so that their moves
        are deferred too (and written in the same statements)."""
        if self._deferred is None:
            raise RuntimeError("hold() needs defer_moves() first")
        for task_id, task in tasks.items():
            self._held.setdefault(task_id, task)

    def flush(self) -> None:
        """Write the moves ``defer_moves`` has gathered (no-op when none): each was planned
        when made, and the moves of one task merge into one row of the UPDATE."""
        pending, self._deferred = self._deferred, None
        if not pending:
            self._deferred = pending
            return
        try:
            self._write(_merged(pending), strict=True)
        finally:
            self._deferred = []

    def _not_found(self, task_id: int) -> TaskNotFoundError:
        return TaskNotFoundError(
            f"task {task_id} not in the queue {self.path}; see `labtasker queue ls`"
        )

    def _write(self, planned: Sequence[_Planned], *, strict: bool) -> bool:
        """Write one round of planned moves (each task at most once): one UPDATE guarded by
        each row's expected state and run_id, and one attempts INSERT. False (nothing written)
        when the guard failed and not ``strict``; StoreError when ``strict``."""
        cols = list(dict.fromkeys(c for p in planned for c in p.sets))
        select = ["unnest(?::BIGINT[]) AS id", "unnest(?::VARCHAR[]) AS old_state"]
        select.append("unnest(?::VARCHAR[]) AS old_run")
        params: list[Any] = [
            [p.old.id for p in planned],
            [p.old.state.value for p in planned],
            [p.old.run_id for p in planned],
        ]
        assign: list[str] = []
        same: list[Any] = []
        for n, col in enumerate(cols):
            # A column another move of the round sets keeps this row's value (known: guarded).
            values = [p.sets[col] if col in p.sets else _db_value(p.task, col) for p in planned]
            if all(v == values[0] for v in values):
                # One value for every row (a state, NULLs): a parameter, not a column to unnest,
                # which costs the UPDATE about a millisecond each.
                assign.append(f"{col} = ?::{_COL_TYPES[col]}")
                same.append(values[0])
            else:
                select.append(f"unnest(?::{_COL_TYPES[col]}[]) AS c{n}")
                params.append(values)
                assign.append(f"{col} = v.c{n}")
        changed = self._con.execute(
            f"UPDATE tasks SET {', '.join(assign)} FROM (SELECT {', '.join(select)}) v"
            " WHERE tasks.id = v.id AND tasks.state = v.old_state"
            " AND tasks.run_id IS NOT DISTINCT FROM v.old_run",
            same + params,
        ).fetchone()[0]
        if changed != len(planned):
            if not strict and changed == 0:
                return False
            raise StoreError(
                f"{self.path}: {len(planned) - changed} of {len(planned)} tasks were not in the"
                " state this process expected; the transaction was rolled back, retry"
            )
        for p in planned:
            self.delta[p.old.state] = self.delta.get(p.old.state, 0) - 1
            self.delta[p.task.state] = self.delta.get(p.task.state, 0) + 1
            self.to_pending = self.to_pending or p.task.state is TaskState.PENDING
            if p.task.state in DEP_FINAL:
                self.finished.add(p.task.id)
            elif p.task.state is TaskState.PENDING:
                self.entered.add(p.task.id)
        attempts = [row for p in planned for row in p.attempt_rows]
        if attempts:
            self._con.execute(
                f"INSERT INTO attempts ({', '.join(_ATTEMPT_COLS)}) SELECT "
                + ", ".join(f"unnest(?::{_ATTEMPT_TYPES[c]}[])" for c in _ATTEMPT_COLS),
                [[row[i] for row in attempts] for i in range(len(_ATTEMPT_COLS))],
            )
        return True


def _db_value(task: Task, col: str) -> Any:
    """Column ``col`` of ``task`` as stored."""
    return task.state.value if col == "state" else to_db(col, getattr(task, col))


def to_db(col: str, value: Any) -> Any:
    if col in ("started_at", "finished_at"):
        return to_db_time(value)
    if col == "result":
        return dump_json(dict(value), allow_nan=True) if value is not None else None
    if col == "gpu_ids":
        return None if value is None else [int(g) for g in value]
    return value
