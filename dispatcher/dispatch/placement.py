"""Placement for the dispatcher: which pending tasks go where this round.

``Placer`` is mixed into ``engine.Dispatcher``: it describes each host's capacity for the pure
scheduler (``scheduler.plan``), reads the pending candidates (kept across rounds while no other
process writes the queue), records the placements as ``launching`` moves and writes the reasons
of the tasks that wait. A placed task's command is rendered again from its template first: one
whose template is now refused fails ("unsafe template: ...") and is never launched.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from dispatcher.core.models import Task, TaskState
from dispatcher.core.scheduler import Candidate, HostCapacity, plan
from dispatcher.dispatch.capacity import host_capacity
from dispatcher.errors import TemplateError
from dispatcher.store.queue import Txn

if TYPE_CHECKING:
    from dispatcher.dispatch.loop import Reporter
    from dispatcher.dispatch.reports import HostState

S = TaskState
#: Seconds between rewrites of pending reasons that are already set (see ``_place``).
REASON_REFRESH = 1.0
#: Plain pending candidates are read this many at a time and kept across continuous rounds.
CANDIDATE_READ = 256


def launch_command(task: Task) -> str:
    """The command to launch for ``task``: its template rendered again with its args.

    The queue file may hold commands rendered by an older labtasker, whose quoting a value
    inside quotes could escape: what runs is always what today's rules render. TemplateError
    when the template is now refused (or cannot be rendered).
    """
    from dispatcher.core.template import compile_template

    return compile_template(task.template).render(task.args)


def new_run_id(task: Task) -> str:
    """A run id unique across queues and hosts; readable in listings and run directories."""
    return f"t{task.id}-a{task.attempt + 1}-{uuid.uuid4().hex[:16]}"


class Placer:
    """The placement half of the dispatcher; see the module docstring."""

    hosts: dict[str, HostState]
    active: dict[int, Task]
    counts: dict[TaskState, int]
    final: dict[int, TaskState]
    reporter: Reporter
    unplaceable: dict[int, str]
    _stop: bool
    _busy: bool
    _queue_changed: bool
    _placed_last: bool
    _reasons_at: float
    _pending: list[Task] | None
    _pending_all: bool

    def _capacity(self, name: str) -> HostCapacity:
        hs = self.hosts[name]
        s = hs.session
        usable = s.up and hs.reconciled and hs.suspended is None
        if hs.suspended:
            reason: str | None = f"{name} {hs.suspended}"
        elif not s.up:
            reason = f"{name} {s.describe()}"
        else:
            reason = None if hs.reconciled else f"{name} reconnecting"
        inv = s.inventory
        inventory = None
        if inv is not None:
            inventory = {"gpus": inv.gpus, "processes": inv.processes, "error": inv.error}
        fetched = inv.fetched_at if inv else 0.0
        released = [i for i, t in hs.released.items() if t >= fetched]
        return host_capacity(
            s.spec,
            order=hs.order,
            usable=usable,
            unusable_reason=reason,
            inventory=inventory,
            active=[t for t in self.active.values() if t.host == name],
            recently_released=released,
        )

    def _candidates(self, tx: Txn, need: int, *, plain: bool, reuse: bool) -> list[Task]:
        """The first ``need`` pending candidates. Plain ones (no dependencies or throttles) are
        read CANDIDATE_READ at a time and kept while ``reuse`` says nobody else changed them."""
        rows = self._pending
        if plain and reuse and rows is not None and (len(rows) >= need or self._pending_all):
            return rows[:need]
        want = max(need, CANDIDATE_READ) if plain else need
        rows = tx.pending_candidates(limit=want, plain=plain)
        self._pending = rows if plain else None
        self._pending_all = len(rows) < want
        return rows[:need]

    def _place(self, tx: Txn, *, plain: bool = False, reuse: bool = False) -> list[Task]:
        self._placed_last = False
        if self._stop or not self.counts[S.PENDING]:
            self.unplaceable = {}
            return []
        caps = [self._capacity(name) for name in self.hosts]
        free = sum(
            len([g for g in c.gpus if g.held_by_task is None and g.foreign is None])
            + max(c.slots_total - c.slots_used, 0)
            for c in caps
            if c.usable
        )
        if free == 0 and self.active and not self._queue_changed:
            # Every slot is ours and taken, and no other process touched the queue since the
            # last plan (whose reasons are on record): nothing can be placed until one of ours
            # ends, and its exit wakes a tick. Skip the candidate query, which scans the
            # pending rows (about 0.3 s every idle tick with a million pending).
            return []
        candidates = self._candidates(tx, free * 2 + 64, plain=plain, reuse=reuse)
        running: dict[str, int] = {}  # active tasks per sweep, for max_running
        for t in self.active.values():
            running[t.sweep] = running.get(t.sweep, 0) + 1
        wanted = [Candidate(t.id, t.priority, t.gpus, t.sweep, t.max_running) for t in candidates]
        result = plan(wanted, caps, running)
        by_id = {t.id: t for t in candidates}
        tx.hold(by_id)  # written with the round's other moves
        launches, refused, commands = [], set(), {}
        for placement in result.placements:
            task = by_id[placement.task_id]
            try:
                command = launch_command(task)
            except TemplateError as err:
                refused.add(task.id)
                self._refuse(tx, task, str(err))
                continue
            moved = tx.move(task.id, S.LAUNCHING, run_id=new_run_id(task), host=placement.host,
                            gpu_ids=list(placement.gpu_ids), attempt=task.attempt + 1,
                            reason=None, exit_code=None, result=None)  # fmt: skip
            if moved is not None:
                if command != moved.command:
                    commands[moved.id] = command
                    moved = moved.replace(command=command)
                launches.append(moved)
        if commands:
            tx.set_commands(commands)
        for moved in launches:
            self.active[moved.id] = moved
        if (launches or refused) and self._pending is not None:
            self._pending = [
                t for t in self._pending if t.id not in self.active and t.id not in refused
            ]
        # Write only the reasons that differ from the rows just read, and while busy only once
        # a second (their "N tasks ahead" changes every tick, and the next tasks in line are
        # placed within a round or two) but at once for tasks that can never be placed:
        # reasons are for display, and a write per tick would cost more than the rest of it.
        now = time.monotonic()
        # Idle ticks write every change: the last plan before dispatch ends must be on record.
        refresh = not self._busy or now - self._reasons_at >= REASON_REFRESH
        reasons = {
            i: r
            for i, r in {**result.waiting, **result.impossible}.items()
            if i in by_id and by_id[i].reason != r and (refresh or i in result.impossible)
        }
        if reasons:
            tx.set_reasons(reasons)
            if self._pending is not None:
                self._pending = [
                    t.replace(reason=reasons[t.id]) if t.id in reasons else t for t in self._pending
                ]
            self._reasons_at = now if refresh else self._reasons_at
        self.unplaceable = dict(result.impossible)
        if not candidates and self.counts[S.PENDING]:
            self.unplaceable = {0: "pending tasks wait for dependencies that will not succeed"}
        elif not result.placements:
            self.unplaceable = {**result.waiting, **result.impossible}
        self._placed_last = bool(result.placements)
        return launches

    def _refuse(self, tx: Txn, task: Task, why: str) -> None:
        """Fail a pending task whose command cannot be rendered safely; it is never launched."""
        reason = why if why.startswith("unsafe template") else f"template: {why}"
        if tx.move(task.id, S.FAILED, reason=reason) is not None:
            self.final[task.id] = S.FAILED
            self.reporter.log(f"task {task.id} failed ({reason})", style="red")
