"""Placement for the dispatcher: which pending tasks go where this round.

``Placement`` is a part the loop owns and calls once per tick: it describes each host's capacity
for the pure scheduler (``scheduler.plan``), reads the pending candidates (kept across rounds
while no other process writes the queue), records the placements as ``launching`` moves and
writes the reasons of the tasks that wait. It owns the cached pending rows, when reasons were
last rewritten and whether the last plan placed anything; it adds placed tasks to the shared
``active`` and sets ``unplaceable``. Dependents whose dependencies run on a cluster may be
submitted there ahead (``core.ahead``; what SLURM holds them back on goes in ``gates``).
A placed task's command is rendered again from its template
first: one whose template is now refused fails ("unsafe template: ...") and is never launched.
"""

from __future__ import annotations

import time
import uuid

from dispatcher.core.ahead import place_ahead
from dispatcher.core.deps import deps_of, gates
from dispatcher.core.models import Task, TaskState
from dispatcher.core.scheduler import Candidate, HostCapacity, Plan, plan
from dispatcher.dispatch.capacity import host_capacity
from dispatcher.dispatch.state import Log, LoopState
from dispatcher.errors import TemplateError
from dispatcher.store.depends import waiting_on
from dispatcher.store.queue import Txn

S = TaskState
#: Seconds between rewrites of pending reasons that are already set (see ``place``).
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


def candidate_of(t: Task) -> Candidate:
    """A pending task as the scheduler sees it."""
    return Candidate(t.id, t.priority, t.gpus, t.sweep, t.max_running, t.gpu_memory, t.gpu_type,
                     t.min_gpu_memory)  # fmt: skip


def new_run_id(task: Task) -> str:
    """A run id unique across queues and hosts; readable in listings and run directories."""
    return f"t{task.id}-a{task.attempt + 1}-{uuid.uuid4().hex[:16]}"


class Placement:
    """Which pending tasks go where; see the module docstring."""

    def __init__(self, state: LoopState, reporter: Log) -> None:
        self.state = state
        self.reporter = reporter
        self.placed_last = False  # the last plan placed a task
        self._reasons_at = 0.0  # when pending reasons were last all rewritten
        self._pending: list[Task] | None = None  # the pending rows read last (``_candidates``)
        self._pending_all = False  # ... and they were all of them

    def capacity(self, name: str, active: list[Task] | None = None) -> HostCapacity:
        """Host ``name`` as the scheduler sees it: usable or why not, its GPUs and slots.

        ``active``: our tasks on that host, when the caller has them grouped already (a pass
        over every running task for each of 64 hosts would cost 64 passes per tick)."""
        hs = self.state.hosts[name]
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
            active=[t for t in self.state.active.values() if t.host == name]
            if active is None
            else active,
            recently_released=released,
            # Connecting for the first time, or up and not yet known: clusters wait (rule 9).
            settling=not s.first_attempt.is_set() or (s.up and not hs.reconciled),
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

    def place(self, tx: Txn, *, plain: bool = False, reuse: bool = False) -> list[Task]:
        """Plan this round's placements and record them as ``launching``; returns the tasks to
        launch. ``plain``: no pending task has dependencies or throttles; ``reuse``: nobody else
        wrote the queue since the last round (the cached pending rows still hold)."""
        self.placed_last = False
        state = self.state
        if state.stop or not state.counts[S.PENDING]:
            state.unplaceable = {}
            return []
        by_host: dict[str | None, list[Task]] = {}
        for t in state.active.values():
            by_host.setdefault(t.host, []).append(t)
        caps = [self.capacity(name, by_host.get(name, [])) for name in state.hosts]
        free = sum(
            len([g for g in c.gpus if g.held_by_task is None and (g.foreign is None or g.room)])
            + max(c.slots_total - c.slots_used, 0)
            for c in caps
            if c.usable
        )
        if free == 0 and state.active and not state.queue_changed:
            # Every slot is ours and taken, and no other process touched the queue since the
            # last plan (whose reasons are on record): nothing can be placed until one of ours
            # ends, and its exit wakes a tick. Skip the candidate query, which scans the
            # pending rows (about 0.3 s every idle tick with a million pending).
            return []
        candidates = self._candidates(tx, free * 2 + 64, plain=plain, reuse=reuse)
        running: dict[str, int] = {}  # active tasks per sweep, for max_running
        for t in state.active.values():
            running[t.sweep] = running.get(t.sweep, 0) + 1
        wanted = [candidate_of(t) for t in candidates]
        result = plan(wanted, caps, running)
        by_id = {t.id: t for t in candidates}
        if not plain and tx.waiters:  # some pending task has dependencies
            result = self._ahead(tx, caps, result, running, by_id)
        tx.hold(by_id)  # written with the round's other moves
        launches = self._record(tx, result, by_id)
        self._write_reasons(tx, result, by_id)
        state.unplaceable = dict(result.impossible)
        if not candidates and state.counts[S.PENDING]:
            state.unplaceable = {0: "pending tasks wait for other tasks; see `labtasker queue ls`"}
        elif not result.placements:
            state.unplaceable = {**result.waiting, **result.impossible}
        self.placed_last = bool(result.placements)
        return launches

    def _ahead(
        self,
        tx: Txn,
        caps: list[HostCapacity],
        result: Plan,
        running: dict[str, int],
        by_id: dict[int, Task],
    ) -> Plan:
        """``result`` with the dependents submitted ahead to clusters added (``core.ahead``):
        those whose dependencies not met yet all run on one cluster, in the jobs it has left.
        A task withdrawn once is not submitted ahead again on runs it was held back on."""
        state = self.state
        state.gates = {i: g for i, g in state.gates.items() if i in state.active}
        state.held_back = {i: r for i, r in state.held_back.items() if i not in state.active}
        free = {c.name: c.slots_total - c.slots_used for c in caps if c.cluster and c.usable}
        for p in result.placements:
            if p.host in free:
                free[p.host] -= 1
            running[by_id[p.task_id].sweep] = running.get(by_id[p.task_id].sweep, 0) + 1
        live = [
            t.id
            for t in state.active.values()
            if t.host in free and t.job_id and t.state is S.RUNNING and free[t.host] > 0
        ]
        if not live:
            return result
        waiting, states = waiting_on(tx, live, sum(max(n, 0) for n in free.values()) * 2)
        ahead, found = [], {}
        for t in waiting:
            deps = deps_of(t.after, t.after_any, t.after_failed)
            gated = gates(deps, states, state.active, frozenset(free))
            if gated and not {g.run_id for g in gated[1]} <= state.held_back.get(t.id, set()):
                ahead.append((candidate_of(t), gated[0]))
                found[t.id] = (t, gated[1])
        offers = {c.name: c.cluster for c in caps if c.cluster}
        placed = place_ahead(ahead, offers, free, running)
        for p in placed:
            by_id[p.task_id], state.gates[p.task_id] = found[p.task_id]
        ids = {p.task_id for p in placed}
        waiting_now = {i: r for i, r in result.waiting.items() if i not in ids}
        return Plan((*result.placements, *placed), waiting_now, result.impossible)

    def _record(self, tx: Txn, result: Plan, by_id: dict[int, Task]) -> list[Task]:
        """Move the placed tasks to ``launching`` (each with its command rendered again)."""
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
        active = self.state.active
        for moved in launches:
            active[moved.id] = moved
        if (launches or refused) and self._pending is not None:
            self._pending = [t for t in self._pending if t.id not in active and t.id not in refused]
        return launches

    def _write_reasons(self, tx: Txn, result: Plan, by_id: dict[int, Task]) -> None:
        """Record why the candidates that were not placed wait (see below for how often)."""
        # Write only the reasons that differ from the rows just read, and while busy only once
        # a second (their "N tasks ahead" changes every tick, and the next tasks in line are
        # placed within a round or two) but at once for tasks that can never be placed:
        # reasons are for display, and a write per tick would cost more than the rest of it.
        now = time.monotonic()
        # Idle ticks write every change: the last plan before dispatch ends must be on record.
        refresh = not self.state.busy or now - self._reasons_at >= REASON_REFRESH
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

    def _refuse(self, tx: Txn, task: Task, why: str) -> None:
        """Fail a pending task whose command cannot be rendered safely; it is never launched."""
        reason = why if why.startswith("unsafe template") else f"template: {why}"
        if tx.move(task.id, S.FAILED, reason=reason) is not None:
            self.state.final[task.id] = S.FAILED
            self.reporter.log(f"task {task.id} failed ({reason})", style="red")
