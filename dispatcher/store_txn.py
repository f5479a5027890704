"""``Txn``: reads and writes inside one store transaction, including ``move``, the only code that
changes a task's state. Bulk operations (cancel, retry) go through ``move``'s set-based core, so
every state change passes ``check_transition`` and the same entry rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatcher.errors import IllegalTransitionError, TaskNotFoundError, TemplateError, UsageError
from dispatcher.models import ACTIVE_STATES, NewTask, Task, TaskState, check_transition
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
_SEL = "id IN (SELECT id FROM temp.labtasker_sel)"
_sel_ids = itertools.count()


def _in(states: Iterable[TaskState]) -> str:
    return ", ".join(f"'{TaskState(s).value}'" for s in sorted(set(states)))


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


class Txn:
    """One open transaction on the queue; valid only inside ``Store.transaction()``."""

    def __init__(self, con: Any, path: Path) -> None:
        self.con = con
        self.path = path
        self._now = datetime.now(UTC).replace(tzinfo=None)

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
        where, params = _filters(states, ids, host, after_id)
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
        where, params = _filters(states, ids, host, None)
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
        """Pending tasks whose ``after`` tasks all succeeded: priority high first, then id."""
        # Pick the ids first and fetch whole rows only for them (a top-N over every column of a
        # million pending rows is several times slower).
        rows = self.con.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT id FROM tasks"
            " WHERE state = 'pending' AND (len(after) = 0 OR id NOT IN (SELECT d.id FROM"
            " (SELECT id, unnest(after) AS dep FROM tasks WHERE state = 'pending'"
            " AND len(after) > 0) d LEFT JOIN tasks s ON s.id = d.dep AND s.state = 'succeeded'"
            " WHERE s.id IS NULL)) ORDER BY priority DESC, id LIMIT ?)"
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
                None if r[7] is None else _loads(r[7]),
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
        Illegal moves raise IllegalTransitionError naming both states.
        """
        task = self.get(task_id)
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
        fields = {k: v for k, v in given.items() if v is not _UNSET}
        if new is not S.LAUNCHING and run_id is not None and run_id != task.run_id:
            return None
        if new is S.LAUNCHING:
            if run_id is None or fields.get("host") is None:
                raise IllegalTransitionError(
                    f"task {task_id}: moving to launching needs a host and a run_id"
                )
            fields["run_id"] = run_id
        (row,) = self._apply(
            "id = ?", [task_id], new, fields, known={task.state: task_id}, returning=TASK_COLUMNS
        )
        return task_from_row(row)

    def _apply(
        self,
        where: str,
        params: list[Any],
        new: TaskState,
        fields: Mapping[str, Any],
        *,
        known: Mapping[TaskState, int] | None = None,
        returning: str = "id",
    ) -> list[Any]:
        """Set-based core of ``move``: apply ``new`` and its entry rules to the rows ``where``;
        returns the ``returning`` columns of the moved rows, in no particular order."""
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
        elif new is S.RUNNING:
            sets["started_at"] = ("?", [now])
        if new in _FINISHED:
            sets["finished_at"] = ("?", [now])
        for col, value in values.items():
            sets[col] = ("?", [value])
        if any(old in ACTIVE_STATES for old in known) and new not in ACTIVE_STATES:
            self._record_attempts(where, params, new, values, now)
        assign = ", ".join(f"{col} = {expr}" for col, (expr, _) in sets.items())
        args = [p for _, ps in sets.values() for p in ps]
        return list(
            self.con.execute(
                f"UPDATE tasks SET {assign} WHERE {where} RETURNING {returning}", args + params
            ).fetchall()
        )

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
            f" FROM tasks WHERE ({where}) AND state IN ({_in(ACTIVE_STATES)})",
            [*args, new.value, values.get("finished_at", now), *params],
        )

    def set_reasons(self, reasons: Mapping[int, str | None]) -> None:
        """Set the pending reason of pending tasks; others and unchanged ones are left alone."""
        by_reason: dict[str | None, list[int]] = {}
        for task_id, reason in reasons.items():
            by_reason.setdefault(reason, []).append(task_id)
        for reason, ids in by_reason.items():
            self.con.execute(
                "UPDATE tasks SET reason = ? WHERE id IN (SELECT unnest(?::BIGINT[]))"
                " AND state = 'pending' AND reason IS DISTINCT FROM ?",
                [reason, ids, reason],
            )

    # User operations on many tasks; ids and states select them (ids all must exist).

    def request_cancel(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> CancelResult:
        """Cancel selected pending tasks now; flag launching/running ones with cancel_requested
        so the dispatcher stops them; leave finished and lost ones alone (reported)."""
        self._select(ids, states)
        skipped = [
            (i, TaskState(s))
            for i, s in self.con.execute(
                f"SELECT id, state FROM tasks WHERE {_SEL} AND state NOT IN"
                f" ('pending', {_in(ACTIVE_STATES)}) ORDER BY id"
            ).fetchall()
        ]
        requested = self.con.execute(
            f"UPDATE tasks SET cancel_requested = true WHERE {_SEL}"
            f" AND state IN ({_in(ACTIVE_STATES)}) RETURNING id"
        ).fetchall()
        cancelled = self._apply(
            f"{_SEL} AND state = 'pending'", [], S.CANCELLED, {"reason": "cancelled by user"}
        )
        return CancelResult(
            sorted(r[0] for r in cancelled), sorted(r[0] for r in requested), skipped
        )

    def retry(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> list[int]:
        """Send selected failed, cancelled or lost tasks back to pending (attempt count kept,
        losses reset, outcome cleared; history stays in ``attempts``). Others are refused."""
        self._select(ids, states)
        self._refuse(_RETRYABLE, "only failed, cancelled or lost tasks can be retried")
        fields = {"exit_code": None, "result": None, "reason": None, "losses": 0}
        return sorted(r[0] for r in self._apply(_SEL, [], S.PENDING, fields))

    def update(
        self,
        ids: Iterable[int],
        *,
        priority: int | None = None,
        args: Mapping[str, Any] | None = None,
        template: str | None = None,
        name: str | None = None,
    ) -> list[int]:
        """Edit pending tasks: ``args`` are merged into each task's args, and the command is
        rendered again (a missing key is a TemplateError naming the task). Others are refused."""
        self._select(ids, None)
        self._refuse({S.PENDING}, "only pending tasks can be updated")
        if priority is not None or name is not None:
            from dispatcher.store_add import check_settings

            check_settings(
                priority=priority or 0, max_attempts=1, timeout=None, gpus=None, name=name
            )
            sets = [(c, v) for c, v in (("priority", priority), ("name", name)) if v is not None]
            self.con.execute(
                f"UPDATE tasks SET {', '.join(f'{c} = ?' for c, _ in sets)} WHERE {_SEL}",
                [v for _, v in sets],
            )
        if args is not None or template is not None:
            self._rerender(args, template)
        return [
            r[0]
            for r in self.con.execute(f"SELECT id FROM tasks WHERE {_SEL} ORDER BY id").fetchall()
        ]

    def _rerender(self, args: Mapping[str, Any] | None, template: str | None) -> None:
        from dispatcher.sweep import merge
        from dispatcher.template import compile_template

        new_ids, new_args, new_cmds, new_tpls = [], [], [], []
        for task_id, old_args, old_tpl in self.con.execute(
            f"SELECT id, args, template FROM tasks WHERE {_SEL} ORDER BY id"
        ).fetchall():
            merged = merge(_loads(old_args), args) if args is not None else _loads(old_args)
            tpl = template if template is not None else old_tpl
            try:
                command = compile_template(tpl).render(merged)
                encoded = dump_json(merged)
            except TemplateError as err:
                raise TemplateError(f"task {task_id}: {err}") from None
            except (TypeError, ValueError) as err:
                raise UsageError(f"task {task_id}: args cannot be stored as JSON ({err})") from None
            new_ids.append(task_id)
            new_args.append(encoded)
            new_cmds.append(command)
            new_tpls.append(tpl)
        self.con.execute(
            "UPDATE tasks SET args = u.args, command = u.command, template = u.template FROM"
            " (SELECT unnest(?::BIGINT[]) AS id, unnest(?::VARCHAR[]) AS args,"
            " unnest(?::VARCHAR[]) AS command, unnest(?::VARCHAR[]) AS template) u"
            " WHERE tasks.id = u.id",
            [new_ids, new_args, new_cmds, new_tpls],
        )

    def remove(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> list[int]:
        """Delete selected tasks and their attempts. Launching/running tasks are refused, and so
        is a task another pending task waits for (``after``), unless that one goes too."""
        self._select(ids, states)
        self._refuse(
            set(TaskState) - ACTIVE_STATES, "cancel it first (`labtasker queue cancel ID`)"
        )
        waiting = self.con.execute(
            "SELECT d.id, d.dep FROM (SELECT id, unnest(after) AS dep FROM tasks"
            " WHERE state = 'pending' AND len(after) > 0) d"
            " WHERE d.dep IN (SELECT id FROM temp.labtasker_sel)"
            " AND d.id NOT IN (SELECT id FROM temp.labtasker_sel) ORDER BY d.id LIMIT 1"
        ).fetchone()
        if waiting is not None:
            raise UsageError(
                f"task {waiting[1]} cannot be removed: pending task {waiting[0]} waits for it"
                f" (--after); remove or cancel task {waiting[0]} too"
            )
        self.con.execute(f"DELETE FROM attempts WHERE task_{_SEL}")
        rows = self.con.execute(f"DELETE FROM tasks WHERE {_SEL} RETURNING id").fetchall()
        return sorted(r[0] for r in rows)

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

    def _select(self, ids: Iterable[int] | None, states: Iterable[TaskState] | None) -> None:
        """Put the selected ids into temp.labtasker_sel; every given id must exist."""
        if ids is None and states is None:
            raise UsageError("name the tasks: give task ids or --state")
        id_list = None if ids is None else sorted(set(ids))
        if id_list is not None:
            missing = self.con.execute(
                "SELECT unnest(?::BIGINT[]) AS id EXCEPT SELECT id FROM tasks ORDER BY id",
                [id_list],
            ).fetchall()
            if missing:
                shown = ", ".join(str(r[0]) for r in missing[:10])
                raise TaskNotFoundError(
                    f"task(s) {shown} not in the queue {self.path}; see `labtasker queue ls`"
                )
        where, params = _filters(states, id_list, None, None)
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE labtasker_sel AS SELECT id FROM tasks{where}", params
        )

    def _refuse(self, allowed: Iterable[TaskState], hint: str) -> None:
        row = self.con.execute(
            f"SELECT id, state FROM tasks WHERE {_SEL} AND state NOT IN ({_in(allowed)})"
            " ORDER BY id LIMIT 1"
        ).fetchone()
        if row is not None:
            raise IllegalTransitionError(f"task {row[0]} is {row[1]}; {hint}")


def _to_db(col: str, value: Any) -> Any:
    if col in ("started_at", "finished_at"):
        return to_db_time(value)
    if col == "result":
        return dump_json(dict(value)) if value is not None else None
    if col == "gpu_ids":
        return None if value is None else [int(g) for g in value]
    return value


def _loads(text: str) -> Any:
    import json

    return json.loads(text)


def _filters(
    states: Iterable[TaskState] | None,
    ids: Iterable[int] | None,
    host: str | None,
    after_id: int | None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if states is not None:
        wanted = [TaskState(s) for s in states]
        clauses.append(f"state IN ({_in(wanted)})" if wanted else "false")
    if ids is not None:
        clauses.append("id IN (SELECT unnest(?::BIGINT[]))")
        params.append(list(ids))
    if host is not None:
        clauses.append("host = ?")
        params.append(host)
    if after_id is not None:
        clauses.append("id > ?")
        params.append(after_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params
