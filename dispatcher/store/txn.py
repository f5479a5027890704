"""``Txn``: reads and user operations inside one store transaction. Every state change, the
bulk ones of cancel and retry included, goes through ``store.move`` (``Txn`` is a ``Mover``:
``move`` and its set-based form ``move_many``, both planned by ``plan_move``, the one definition
of the entry rules); edits that change no state live in ``store.edit``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dispatcher.core.deps import READY_STATES, DepKind
from dispatcher.core.models import ACTIVE_STATES, NewTask, TaskState
from dispatcher.core.snapshot import NO_CODE, CodeRef
from dispatcher.store import depends
from dispatcher.store import edit as store_edit
from dispatcher.store.depends import HAS_DEPS
from dispatcher.store.edit import SELECTED, filters, sql_in
from dispatcher.store.move import Mover, MoveRequest, plan_move
from dispatcher.store.schema import TASK_COLUMNS, from_db_time, task_from_row

if TYPE_CHECKING:
    from dispatcher.core.models import Task
    from dispatcher.store.add import AddResult, Staged, TaskBatch

__all__ = ["Attempt", "CancelResult", "MoveRequest", "Tally", "Txn", "plan_move"]

S = TaskState
_RETRYABLE = frozenset({S.FAILED, S.CANCELLED, S.LOST})
_CANCELLABLE = ACTIVE_STATES | {S.PENDING}
#: SQL condition on a dependency ``d`` (kind 0, 1, 2: after, after_any, after_failed) and the
#: task ``s`` it names: ``core.deps.READY_STATES``.
_DEP_HOLDS = " OR ".join(
    f"(d.kind = {n} AND s.state IN ({sql_in(READY_STATES[kind])}))"
    for n, kind in enumerate(DepKind)
)
_DEP_HOLDS = f"({_DEP_HOLDS})"


@dataclass(frozen=True)
class CancelResult:
    """What ``request_cancel`` did: cancelled pending ids, ids flagged for the dispatcher, and
    ids left alone with their state (already finished or lost)."""

    cancelled: list[int]
    requested: list[int]
    skipped: list[tuple[int, TaskState]]
    waiting: list[int] = field(default_factory=list)  # cancelled as they waited (--after)


@dataclass(frozen=True)
class Tally:
    """What the dispatcher reads every round in one statement: tasks per state, whether any
    pending task has ``after`` dependencies or a throttled sweep, and the active tasks that
    another process flagged with cancel_requested."""

    counts: dict[TaskState, int]
    pending_after: int
    pending_throttled: int
    cancel_requested: frozenset[int]


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


class Txn(Mover):
    """One open transaction on the queue; valid only inside ``Store.transaction()``."""

    # Reads.

    def get(self, task_id: int) -> Task:
        """The task with ``task_id``; TaskNotFoundError if absent."""
        row = self.con.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", [task_id]
        ).fetchone()
        if row is None:
            raise self._not_found(task_id)
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

    def last_finished(self, state: TaskState, limit: int) -> tuple[list[Task], int]:
        """The ``limit`` tasks in ``state`` that finished last (latest first), and how many
        tasks are in that state."""
        rows = self.con.execute(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE state = ?"
            " ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT ?",
            [state.value, max(0, limit)],
        ).fetchall()
        return [task_from_row(r) for r in rows], self.count(states=[state])

    def median_runtime(self) -> float | None:
        """Median seconds from start to finish of the succeeded tasks (None: none yet)."""
        row = self.con.execute(
            "SELECT median(epoch(finished_at) - epoch(started_at)) FROM tasks"
            " WHERE state = ? AND started_at IS NOT NULL AND finished_at IS NOT NULL",
            [S.SUCCEEDED.value],
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def pending_reasons(self, limit: int = 3) -> list[tuple[str, int]]:
        """The most common reasons pending tasks wait for, with how many tasks each holds."""
        rows = self.con.execute(
            "SELECT reason, count(*) AS n FROM tasks WHERE state = 'pending' AND reason IS NOT"
            " NULL GROUP BY reason ORDER BY n DESC, reason LIMIT ?",
            [limit],
        ).fetchall()
        return [(str(r), int(n)) for r, n in rows]

    def tally(self) -> Tally:
        """Counts per state (every state a key) and the rest of ``Tally``, in one statement."""
        counts = dict.fromkeys(TaskState, 0)
        after = throttled = 0
        cancels: set[int] = set()
        for state, n, deps, limited, flagged in self.con.execute(
            f"SELECT state, count(*), count(*) FILTER (WHERE {HAS_DEPS}),"
            " count(*) FILTER (WHERE max_running IS NOT NULL),"
            " list(id) FILTER (WHERE cancel_requested) FROM tasks GROUP BY state"
        ).fetchall():
            counts[TaskState(state)] = n
            if state == S.PENDING.value:
                after, throttled = deps, limited
            elif TaskState(state) in ACTIVE_STATES:
                cancels.update(flagged or ())
        return Tally(counts, after, throttled, frozenset(cancels))

    def pending_candidates(self, limit: int, *, plain: bool = False) -> list[Task]:
        """Pending tasks whose dependencies all hold (``core.deps.READY_STATES``), at most
        ``max_running`` of each throttled sweep: priority high first, then id. ``plain``: the
        caller knows (``tally``) that no pending task has dependencies or a throttle, so a
        plain top-N does."""
        if plain:
            rows = self.con.execute(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT id FROM tasks"
                " WHERE state = 'pending' ORDER BY priority DESC, id LIMIT ?)"
                " ORDER BY priority DESC, id",
                [max(0, limit)],
            ).fetchall()
            return [task_from_row(r) for r in rows]
        # Pick the ids first and fetch whole rows only for them (a top-N over every column of a
        # million pending rows is several times slower). `ready`: pending, every dependency
        # holds (core.deps.READY_STATES, as SQL below). max_running = K: at most the first K
        # *ready* tasks of a sweep (models.sweep_key) can start now, so the rest must not crowd
        # other sweeps' tasks out of the LIMIT; counting only ready ones keeps a sweep moving
        # past tasks that wait.
        rows = self.con.execute(
            "WITH deps AS (SELECT id, unnest(after) AS dep, 0 AS kind FROM tasks"
            f" WHERE state = 'pending' AND {HAS_DEPS} UNION ALL"
            f" SELECT id, unnest(after_any), 1 FROM tasks WHERE state = 'pending' AND {HAS_DEPS}"
            " UNION ALL SELECT id, unnest(after_failed), 2 FROM tasks WHERE state = 'pending'"
            f" AND {HAS_DEPS}),"
            " ready AS (SELECT id, priority, name, batch, max_running FROM tasks"
            f" WHERE state = 'pending' AND (NOT {HAS_DEPS} OR id NOT IN (SELECT d.id FROM deps d"
            f" LEFT JOIN tasks s ON s.id = d.dep AND {_DEP_HOLDS} WHERE s.id IS NULL))),"
            " capped AS (SELECT id FROM (SELECT id, max_running, row_number() OVER (PARTITION BY"
            " coalesce(name, 'batch ' || batch) ORDER BY priority DESC, id) AS rn FROM ready"
            " WHERE max_running IS NOT NULL) WHERE rn <= max_running)"
            f" SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT id FROM ready"
            " WHERE max_running IS NULL OR id IN (SELECT id FROM capped)"
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

    def set_job(self, task_id: int, run_id: str, job_id: str | None, reason: str | None) -> None:
        """Record the SLURM job of a launched or running task's run, and why SLURM holds it;
        while moves are deferred, written with them (``flush``), not one statement a report."""
        self._jobs[task_id, run_id] = (job_id, reason)
        if self._deferred is None:
            self.flush()

    def flush(self) -> None:
        """The deferred moves, then the gathered job ids in one UPDATE (a task that ended in
        the same round keeps its job id and its own reason)."""
        super().flush()
        jobs, self._jobs = self._jobs, {}
        if jobs:
            self._con.execute(
                "UPDATE tasks SET job_id = v.job, reason = CASE WHEN tasks.state IN ('launching',"
                " 'running') THEN v.why ELSE tasks.reason END FROM (SELECT unnest(?::BIGINT[]) AS"
                " id, unnest(?::VARCHAR[]) AS run, unnest(?::VARCHAR[]) AS job,"
                " unnest(?::VARCHAR[]) AS why) v WHERE tasks.id = v.id AND tasks.run_id = v.run"
                " AND (tasks.state IN ('launching', 'running') OR tasks.job_id IS NULL)",
                [list(c) for c in zip(*((*k, *v) for k, v in jobs.items()), strict=True)],
            )

    def set_commands(self, commands: Mapping[int, str]) -> None:
        """Store the commands rendered again at launch (see ``dispatch.placement``)."""
        if commands:
            self.con.execute(
                "UPDATE tasks SET command = v.command FROM (SELECT unnest(?::BIGINT[]) AS id,"
                " unnest(?::VARCHAR[]) AS command) v WHERE tasks.id = v.id",
                [list(commands), list(commands.values())],
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
        gpu_needs: Mapping[str, int | str | None] | None = None,
    ) -> list[int]:
        """Edit pending tasks; see ``store_edit.update``."""
        return store_edit.update(self.con, self.path, ids, priority=priority, args=args,
                                 template=template, name=name, gpu_needs=gpu_needs)  # fmt: skip

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
        why = {"reason": "cancelled by user"}
        self.move_many(
            [MoveRequest(i, S.CANCELLED, None, why) for i in by_state.get(S.PENDING, [])]
        )
        requested = sorted(i for s in ACTIVE_STATES for i in by_state.get(s, []))
        skipped: list[tuple[int, TaskState]] = sorted(
            (i, s) for s, found in by_state.items() if s not in _CANCELLABLE for i in found
        )
        waiting = [i for i, _ in self.settle()]  # those that waited `after` a cancelled task
        return CancelResult(by_state.get(S.PENDING, []), requested, skipped, waiting)

    def retry(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> list[int]:
        """Send selected failed, cancelled or lost tasks back to pending (attempt count kept,
        losses reset, outcome cleared; history stays in ``attempts``), with the tasks their
        outcome cancelled (``store.depends``); the ids left pending (one whose other dependency
        can no longer hold is cancelled again). Others are refused."""
        store_edit.select(self.con, self.path, ids, states)
        store_edit.refuse(
            self.con, _RETRYABLE, "only failed, cancelled or lost tasks can be retried"
        )
        fields = {"exit_code": None, "result": None, "reason": None, "losses": 0}
        found = self.con.execute(f"SELECT id FROM tasks WHERE {SELECTED} ORDER BY id").fetchall()
        moved = [r[0] for r in found]
        # With them, the tasks their outcome cancelled (``store.depends``), down the chains.
        moved += depends.brought_back(self, moved)
        self.move_many([MoveRequest(i, S.PENDING, None, fields) for i in moved])
        again = {i for i, _ in self.settle()}  # another dependency still cannot hold
        return [i for i in moved if i not in again]

    def settle(self, *, everything: bool = False) -> list[tuple[int, str]]:
        """Write deferred moves, then apply the dependency rule to the tasks they (and this
        transaction's other moves and adds) concern; called before every commit. Returns the
        (id, reason) of the tasks it cancelled. ``everything``: every pending task with
        dependencies, as after an upgrade from a queue that had no such rule."""
        self.flush()
        cancelled = depends.settle(self, everything=everything)
        self.settled += cancelled
        return cancelled

    def add(self, tasks: Sequence[NewTask], *, skip_existing: bool = False) -> AddResult:
        """Add fully formed tasks as pending. Ids are new (never reused) and contiguous;
        ``duplicates`` lists the new ids whose template and args (``core/identity.py``) equal a
        pending, launching, running or succeeded task's; ``skip_existing`` leaves those out."""
        from dispatcher.store.add import stage_tasks

        return self.insert(stage_tasks(tasks), skip_existing=skip_existing)

    def add_batch(self, batch: TaskBatch, *, skip_existing: bool = False) -> AddResult:
        """Add a rendered-on-the-fly batch (``queue add``); see ``add`` for the result. A point
        repeating an earlier point of the batch is dropped (counted in ``repeated``)."""
        from dispatcher.store.add import stage_batch

        staged = stage_batch(batch)
        try:
            return self.insert(staged, skip_existing=skip_existing)
        finally:
            staged.cleanup()

    def insert(
        self, staged: Staged, *, skip_existing: bool = False, code: CodeRef = NO_CODE
    ) -> AddResult:
        """Insert staged tasks (``store.add``), each recording ``code`` (its project snapshot);
        those with dependencies are settled before commit (``store.depends``): they wait for a
        task, or are cancelled at once."""
        from dispatcher.store.add import insert

        now = self.now()
        result = insert(self.con, staged, now=now, skip_existing=skip_existing, code=code)
        if any(staged.deps.values()):
            self.entered.update(result.ids)
        return result
