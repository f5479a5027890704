"""``Txn``: reads and writes inside one store transaction, including ``move``, the only code that
changes a task's state. Bulk operations (cancel, retry) go through ``move``'s set-based core, so
every state change passes ``check_transition`` and the same entry rules; edits that change no
state (update, remove) live in ``store_edit``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatcher import store_edit
from dispatcher.errors import IllegalTransitionError, StoreError, TaskNotFoundError
from dispatcher.models import ACTIVE_STATES, NewTask, Task, TaskState, check_transition
from dispatcher.store_edit import SELECTED, filters, sql_in
from dispatcher.store_schema import (
    TASK_COLUMNS,
    dump_json,
    from_db_time,
    task_from_row,
    to_db_time,
)

if TYPE_CHECKING:
    from dispatcher.store_add import AddResult, TaskBatch

S = TaskState
_UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()
_FINISHED = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST})
_RETRYABLE = frozenset({S.FAILED, S.CANCELLED, S.LOST})
_CANCELLABLE = ACTIVE_STATES | {S.PENDING}


@dataclass(frozen=True)
class CancelResult:
    """What ``request_cancel`` did: cancelled pending ids, ids flagged for the dispatcher, and
    ids left alone with their state (already finished or lost)."""

    cancelled: list[int]
    requested: list[int]
    skipped: list[tuple[int, TaskState]]


@dataclass(frozen=True)
class Attempt:
    """One finished attempt of a task (a row of the ``attempts`` table)."""

    task_id: int
    attempt: int
    run_id: str | None
    host: str | None
    gpu_ids: list[int] | None
    outcome: TaskState
    exit_code: int | None
    result: dict[str, Any] | None
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None


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
    attempt_row: tuple[Any, ...] | None  # values for _ATTEMPT_COLS


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
    values = {k: _to_db(k, v) for k, v in fields.items()}
    sets: dict[str, Any] = {"state": new.value}
    if new is S.PENDING:
        sets.update(dict.fromkeys(("host", "gpu_ids", "run_id", "started_at", "finished_at")))
        sets["cancel_requested"] = False
    elif new is S.LAUNCHING:
        sets.update(dict.fromkeys(("exit_code", "result", "started_at", "finished_at", "reason")))
        sets["attempt"] = task.attempt + 1
    sets.update(values)
    # Entry times: the one given, or now (a None from a report that lacked it counts as none).
    if new is S.RUNNING:
        sets["started_at"] = values.get("started_at") or now
    if new in _FINISHED:
        sets["finished_at"] = values.get("finished_at") or now
    attempt_row = None
    if task.state in ACTIVE_STATES and new not in ACTIVE_STATES:
        old = {
            "attempt": task.attempt,
            "run_id": task.run_id,
            "host": task.host,
            "gpu_ids": task.gpu_ids,
            "exit_code": task.exit_code,
            "result": _to_db("result", task.result),
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
    return _Planned(task, task.replace(**changes), sets, attempt_row)


class Txn:
    """One open transaction on the queue; valid only inside ``Store.transaction()``."""

    def __init__(self, con: Any, path: Path) -> None:
        self._con = con
        self.path = path
        self._now = datetime.now(UTC).replace(tzinfo=None)
        self._deferred: list[MoveRequest] | None = None
        self._held: dict[int, Task] = {}
        self._held_start: dict[int, Task] = {}

    @property
    def con(self) -> Any:
        """The DuckDB connection; moves deferred by ``defer_moves`` are written first."""
        if self._deferred:
            self.flush()
        return self._con

    def now(self) -> datetime:
        """This transaction's timestamp (naive UTC, as stored)."""
        return self._now

    # Reads.

    def get(self, task_id: int) -> Task:
        """The task with ``task_id``; TaskNotFoundError if absent."""
        row = self.con.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", [task_id]
        ).fetchone()
        if row is None:
            raise TaskNotFoundError(
                f"task {task_id} is not in the queue {self.path}; see `labtasker queue ls`"
            )
        return task_from_row(row)

    def tasks(
        self,
        *,
        states: Iterable[TaskState] | None = None,
        ids: Iterable[int] | None = None,
        host: str | None = None,
        limit: int | None = None,
        after_id: int | None = None,
    ) -> list[Task]:
        """Tasks matching every filter given, ordered by id; ``after_id`` pages through them."""
        where, params = filters(states, ids, host, after_id)
        if limit is None:
            sql = f"SELECT {TASK_COLUMNS} FROM tasks{where} ORDER BY id"
        else:
            # Ids first, whole rows after: fast on a million rows.
            sql = (
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN"
                f" (SELECT id FROM tasks{where} ORDER BY id LIMIT ?) ORDER BY id"
            )
            params.append(max(0, limit))
        return [task_from_row(r) for r in self.con.execute(sql, params).fetchall()]

    def count(
        self,
        *,
        states: Iterable[TaskState] | None = None,
        ids: Iterable[int] | None = None,
        host: str | None = None,
    ) -> int:
        """How many tasks match every filter given."""
        where, params = filters(states, ids, host, None)
        return int(self.con.execute(f"SELECT count(*) FROM tasks{where}", params).fetchone()[0])

    def counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state; every state is a key."""
        out = dict.fromkeys(TaskState, 0)
        for state, n in self.con.execute(
            "SELECT state, count(*) FROM tasks GROUP BY state"
        ).fetchall():
            out[TaskState(state)] = n
        return out

    def pending_candidates(self, limit: int) -> list[Task]:
        """Pending tasks whose ``after`` tasks all succeeded, at most ``max_running`` of each
        throttled sweep: priority high first, then id."""
        # Pick the ids first and fetch whole rows only for them (a top-N over every column of a
        # million pending rows is several times slower).
        rows = self.con.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT id FROM tasks"
            " WHERE state = 'pending' AND (len(after) = 0 OR id NOT IN (SELECT d.id FROM"
            " (SELECT id, unnest(after) AS dep FROM tasks WHERE state = 'pending'"
            " AND len(after) > 0) d LEFT JOIN tasks s ON s.id = d.dep AND s.state = 'succeeded'"
            " WHERE s.id IS NULL))"
            # max_running = K: at most the first K of a sweep (models.sweep_key) can start now,
            # so the rest must not crowd other sweeps' tasks out of the LIMIT.
            " AND (max_running IS NULL OR id IN (SELECT id FROM (SELECT id, max_running,"
            " row_number() OVER (PARTITION BY coalesce(name, 'batch ' || batch)"
            " ORDER BY priority DESC, id) AS rn FROM tasks WHERE state = 'pending'"
            " AND max_running IS NOT NULL) WHERE rn <= max_running))"
            " ORDER BY priority DESC, id LIMIT ?)"
            " ORDER BY priority DESC, id",
            [max(0, limit)],
        ).fetchall()
        return [task_from_row(r) for r in rows]

    def attempts(self, task_id: int) -> list[Attempt]:
        """The finished attempts of a task, oldest first."""
        rows = self.con.execute(
            "SELECT task_id, attempt, run_id, host, gpu_ids, outcome, exit_code, result,"
            " started_at, finished_at, reason FROM attempts WHERE task_id = ?"
            " ORDER BY finished_at, attempt",
            [task_id],
        ).fetchall()
        return [
            Attempt(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                TaskState(r[5]),
                r[6],
                None if r[7] is None else json.loads(r[7]),
                from_db_time(r[8]),
                from_db_time(r[9]),
                r[10],
            )
            for r in rows
        ]

    # The state machine.

    def move(
        self,
        task_id: int,
        new: TaskState,
        *,
        run_id: str | None = None,
        task: Task | None = None,
        host: str | None = _UNSET,
        gpu_ids: Sequence[int] | None = _UNSET,
        attempt: int = _UNSET,
        losses: int = _UNSET,
        exit_code: int | None = _UNSET,
        result: Mapping[str, Any] | None = _UNSET,
        reason: str | None = _UNSET,
        started_at: datetime | None = _UNSET,
        finished_at: datetime | None = _UNSET,
        cancel_requested: bool = _UNSET,
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
        }
        req = MoveRequest(task_id, new, run_id, {k: v for k, v in given.items() if v is not _UNSET})
        if self._deferred is not None and task is None:
            task = self._held.get(task_id)
            if task is not None:
                planned = plan_move(task, req, self._now)
                if planned is None:
                    return None
                self._deferred.append(req)
                self._held[task_id] = planned.task
                return planned.task
        if task is not None and task.id == task_id:
            planned = plan_move(task, req, self._now)
            if planned is None:
                # Fenced by the caller's copy; confirm against the file before ignoring it.
                return self.move_many([req])[0]
            if self._write([planned], strict=False):
                return planned.task
        return self.move_many([req])[0]

    def move_many(
        self, requests: Sequence[MoveRequest], *, known: Mapping[int, Task] | None = None
    ) -> list[Task | None]:
        """Apply many moves with a fixed handful of statements; the result is aligned with
        ``requests``: the task after its move, or None where ``run_id`` fenced it off.

        Each move is checked as ``move`` checks it against the row's current state: the row in
        ``known`` (read earlier in this transaction, or held by the one dispatcher), else the
        row read from the file. An illegal move raises IllegalTransitionError and nothing is
        written. A task may appear more than once (its moves apply in order). Each round of
        moves is one UPDATE, guarded by every row's expected state and run_id (a row found
        otherwise raises StoreError: the transaction rolls back), and one attempts INSERT.
        """
        if not requests:
            return []
        self.flush()
        current = {i: t for i, t in (known or {}).items()}
        ids = sorted({r.task_id for r in requests} - set(current))
        if ids:
            rows = self._con.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT unnest(?::BIGINT[]))",
                [ids],
            ).fetchall()
            current.update((t.id, t) for t in map(task_from_row, rows))
        rounds: list[list[_Planned]] = []
        seen: dict[int, int] = {}
        out: list[Task | None] = []
        for req in requests:
            task = current.get(req.task_id)
            if task is None:
                raise self._not_found(req.task_id)
            planned = plan_move(task, req, self._now)
            if planned is None:
                out.append(None)
                continue
            n = seen[req.task_id] = seen.get(req.task_id, -1) + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(planned)
            current[req.task_id] = planned.task
            out.append(planned.task)
        for group in rounds:
            self._write(group, strict=True)
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
        self._held_start = dict(held)

    def flush(self) -> None:
        """Write the moves ``defer_moves`` has gathered (no-op when none)."""
        pending, self._deferred = self._deferred, None
        if not pending:
            self._deferred = pending
            return
        try:
            done = self.move_many(pending, known=self._held_start)
        finally:
            self._deferred = []
            self._held_start = dict(self._held)
        for req, task in zip(pending, done, strict=True):
            if task is None:
                raise StoreError(
                    f"task {req.task_id} in {self.path} changed while the dispatcher held it"
                    f" (a move to {req.new} was fenced off); stop other dispatchers and retry"
                )

    def _not_found(self, task_id: int) -> TaskNotFoundError:
        return TaskNotFoundError(
            f"task {task_id} is not in the queue {self.path}; see `labtasker queue ls`"
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
        for n, col in enumerate(cols):
            select.append(f"unnest(?::{_COL_TYPES[col]}[]) AS c{n}")
            # A column another move of the round sets keeps this row's value (known: guarded).
            params.append(
                [p.sets[col] if col in p.sets else _db_value(p.task, col) for p in planned]
            )
        assign = ", ".join(f"{col} = v.c{n}" for n, col in enumerate(cols))
        changed = self._con.execute(
            f"UPDATE tasks SET {assign} FROM (SELECT {', '.join(select)}) v"
            " WHERE tasks.id = v.id AND tasks.state = v.old_state"
            " AND tasks.run_id IS NOT DISTINCT FROM v.old_run",
            params,
        ).fetchone()[0]
        if changed != len(planned):
            if not strict and changed == 0:
                return False
            raise StoreError(
                f"{self.path}: {len(planned) - changed} of {len(planned)} tasks were not in the"
                " state this process expected; the transaction was rolled back, retry"
            )
        attempts = [p.attempt_row for p in planned if p.attempt_row is not None]
        if attempts:
            self._con.execute(
                f"INSERT INTO attempts ({', '.join(_ATTEMPT_COLS)}) SELECT "
                + ", ".join(f"unnest(?::{_ATTEMPT_TYPES[c]}[])" for c in _ATTEMPT_COLS),
                [[row[i] for row in attempts] for i in range(len(_ATTEMPT_COLS))],
            )
        return True

    def _apply(
        self,
        where: str,
        params: list[Any],
        new: TaskState,
        fields: Mapping[str, Any],
        *,
        known: Mapping[TaskState, int] | None = None,
    ) -> None:
        """Set-based core of ``move``: apply ``new`` and its entry rules to the rows ``where``."""
        if known is None:
            rows = self.con.execute(
                f"SELECT state, min(id) FROM tasks WHERE {where} GROUP BY state", params
            ).fetchall()
            known = {TaskState(s): i for s, i in rows}
        for old, example in known.items():
            check_transition(example, old, new)
        now = self.now()
        values = {k: _to_db(k, v) for k, v in fields.items()}
        sets: dict[str, tuple[str, list[Any]]] = {"state": ("?", [new.value])}
        if new is S.PENDING:
            for col in ("host", "gpu_ids", "run_id", "started_at", "finished_at"):
                sets[col] = ("NULL", [])
            sets["cancel_requested"] = ("false", [])
        elif new is S.LAUNCHING:
            for col in ("exit_code", "result", "started_at", "finished_at", "reason"):
                sets[col] = ("NULL", [])
            sets["attempt"] = ("attempt + 1", [])
        for col, value in values.items():
            sets[col] = ("?", [value])
        # Entry times: the one given, or now (a None from a report that lacked it counts as none).
        if new is S.RUNNING:
            sets["started_at"] = ("?", [values.get("started_at") or now])
        if new in _FINISHED:
            sets["finished_at"] = ("?", [values.get("finished_at") or now])
        if any(old in ACTIVE_STATES for old in known) and new not in ACTIVE_STATES:
            self._record_attempts(where, params, new, values, now)
        assign = ", ".join(f"{col} = {expr}" for col, (expr, _) in sets.items())
        args = [p for _, ps in sets.values() for p in ps]
        # No RETURNING here or anywhere in the store: duckdb 2.0.1 can return an updated row
        # twice when the update runs on several threads.
        self.con.execute(f"UPDATE tasks SET {assign} WHERE {where}", args + params)

    def _record_attempts(
        self, where: str, params: list[Any], new: TaskState, values: Mapping[str, Any], now: Any
    ) -> None:
        cols = (
            "attempt",
            "run_id",
            "host",
            "gpu_ids",
            "exit_code",
            "result",
            "started_at",
            "reason",
        )
        exprs, args = [], []
        for col in cols:
            if col in values:
                exprs.append("?")
                args.append(values[col])
            else:
                exprs.append(col)
        self.con.execute(
            "INSERT INTO attempts (task_id, attempt, run_id, host, gpu_ids, exit_code, result,"
            f" started_at, reason, outcome, finished_at) SELECT id, {', '.join(exprs)}, ?, ?"
            f" FROM tasks WHERE ({where}) AND state IN ({sql_in(ACTIVE_STATES)})",
            [*args, new.value, values.get("finished_at") or now, *params],
        )

    def set_reasons(self, reasons: Mapping[int, str | None]) -> None:
        """Set the pending reason of pending tasks; others and unchanged ones are left alone."""
        if not reasons:
            return
        self.con.execute(
            "UPDATE tasks SET reason = v.reason FROM (SELECT unnest(?::BIGINT[]) AS id,"
            " unnest(?::VARCHAR[]) AS reason) v WHERE tasks.id = v.id AND tasks.state = 'pending'"
            " AND tasks.reason IS DISTINCT FROM v.reason",
            [list(reasons), list(reasons.values())],
        )

    # User operations on many tasks; ids and states select them (ids all must exist).

    def update(
        self,
        ids: Iterable[int],
        *,
        priority: int | None = None,
        args: Mapping[str, Any] | None = None,
        template: str | None = None,
        name: str | None = None,
    ) -> list[int]:
        """Edit pending tasks; see ``store_edit.update``."""
        return store_edit.update(
            self.con, self.path, ids, priority=priority, args=args, template=template, name=name
        )

    def remove(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> list[int]:
        """Delete tasks that are not launching or running; see ``store_edit.remove``."""
        return store_edit.remove(self.con, self.path, ids, states)

    def request_cancel(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> CancelResult:
        """Cancel selected pending tasks now; flag launching/running ones with cancel_requested
        so the dispatcher stops them; leave finished and lost ones alone (reported)."""
        store_edit.select(self.con, self.path, ids, states)
        by_state: dict[TaskState, list[int]] = {}
        for i, state in self.con.execute(
            f"SELECT id, state FROM tasks WHERE {SELECTED} ORDER BY id"
        ).fetchall():
            by_state.setdefault(TaskState(state), []).append(i)
        self.con.execute(
            f"UPDATE tasks SET cancel_requested = true WHERE {SELECTED}"
            f" AND state IN ({sql_in(ACTIVE_STATES)})"
        )
        self._apply(
            f"{SELECTED} AND state = 'pending'", [], S.CANCELLED, {"reason": "cancelled by user"}
        )
        requested = sorted(i for s in ACTIVE_STATES for i in by_state.get(s, []))
        skipped: list[tuple[int, TaskState]] = sorted(
            (i, s) for s, found in by_state.items() if s not in _CANCELLABLE for i in found
        )
        return CancelResult(by_state.get(S.PENDING, []), requested, skipped)

    def retry(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> list[int]:
        """Send selected failed, cancelled or lost tasks back to pending (attempt count kept,
        losses reset, outcome cleared; history stays in ``attempts``). Others are refused."""
        store_edit.select(self.con, self.path, ids, states)
        store_edit.refuse(
            self.con, _RETRYABLE, "only failed, cancelled or lost tasks can be retried"
        )
        fields = {"exit_code": None, "result": None, "reason": None, "losses": 0}
        moved = self.con.execute(f"SELECT id FROM tasks WHERE {SELECTED} ORDER BY id").fetchall()
        self._apply(SELECTED, [], S.PENDING, fields)
        return [r[0] for r in moved]

    def add(self, tasks: Sequence[NewTask], *, skip_existing: bool = False) -> AddResult:
        """Add fully formed tasks as pending. Ids are new (never reused) and contiguous;
        ``duplicates`` lists input indexes whose command equals a pending, launching, running or
        succeeded task's; ``skip_existing`` leaves those out."""
        from dispatcher.store_add import insert, stage_tasks

        return insert(self.con, stage_tasks(tasks), now=self.now(), skip_existing=skip_existing)

    def add_batch(self, batch: TaskBatch, *, skip_existing: bool = False) -> AddResult:
        """Add a rendered-on-the-fly batch (``queue add``); see ``add`` for the result."""
        from dispatcher.store_add import insert, stage_batch

        staged = stage_batch(batch)
        try:
            return insert(self.con, staged, now=self.now(), skip_existing=skip_existing)
        finally:
            staged.cleanup()


def _db_value(task: Task, col: str) -> Any:
    """Column ``col`` of ``task`` as stored."""
    return task.state.value if col == "state" else _to_db(col, getattr(task, col))


def _to_db(col: str, value: Any) -> Any:
    if col in ("started_at", "finished_at"):
        return to_db_time(value)
    if col == "result":
        return dump_json(dict(value), allow_nan=True) if value is not None else None
    if col == "gpu_ids":
        return None if value is None else [int(g) for g in value]
    return value
