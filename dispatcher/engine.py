"""The dispatch loop: reconcile -> collect -> plan -> launch, until the queue drains.

One ``Dispatcher`` serves one queue (a lock file refuses a second). Each tick opens the queue in
one short transaction, applies what hosts reported (launch replies, exits, probes), notices queue
edits made from other terminals (cancels, new tasks, priorities), plans placements with the pure
scheduler, records them as ``launching`` and only then sends the launches. A launch whose reply is
lost stays ``launching``; the next probe of its host finds the run or re-sends the same run id,
which the helper creates atomically: a task is never started twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dispatcher.capacity import host_capacity
from dispatcher.collect import LogCollector
from dispatcher.errors import ConnectionLostError, DispatcherError, RemoteError, TransportError
from dispatcher.hosts import HostsConfig
from dispatcher.hostsession import HostSession, ssh_options
from dispatcher.models import ACTIVE_STATES, Task, TaskState
from dispatcher.outcome import Outcome, lost_outcome, outcome_of, parse_time
from dispatcher.paths import dispatch_lock
from dispatcher.scheduler import Candidate, HostCapacity, plan
from dispatcher.store import Store, Txn

S = TaskState


@dataclass
class DispatchOptions:
    """Knobs of one ``labtasker dispatch`` run."""

    forever: bool = False
    accept_new_host_keys: bool = False
    idle_tick: float = 2.0  # re-read the queue at least this often (seconds)
    gpu_refresh: float = 5.0  # re-ask nvidia-smi this often while tasks wait for GPUs
    coalesce: float = 0.005  # gather events this long before a tick


@dataclass
class Snapshot:
    """What the progress display shows."""

    counts: dict[TaskState, int]
    hosts: list[tuple[str, str]]
    succeeded: int = 0
    failed: int = 0


class Reporter(Protocol):
    """Where the dispatcher tells the user what happens (a rich live view, or plain lines)."""

    def log(self, message: str, *, style: str = "") -> None: ...

    def update(self, snapshot: Snapshot) -> None: ...


def new_run_id(task: Task) -> str:
    """A run id unique across queues and hosts; readable in listings and run directories."""
    return f"t{task.id}-a{task.attempt + 1}-{uuid.uuid4().hex[:16]}"


@dataclass
class _HostState:
    session: HostSession
    order: int
    reconciled: bool = False
    refreshing: bool = False
    released: dict[int, float] = field(default_factory=dict)  # gpu index -> monotonic time
    failures: deque[float] = field(default_factory=deque)
    suspended: str | None = None
    orphans: set[str] = field(default_factory=set)  # run ids fenced off after a loss


class Dispatcher:
    """Runs the loop described in the module docstring."""

    def __init__(
        self,
        store: Store,
        config: HostsConfig,
        reporter: Reporter,
        logs_dir: Path,
        options: DispatchOptions | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.reporter = reporter
        self.options = options or DispatchOptions()
        self.collector = LogCollector(logs_dir)
        self.hosts: dict[str, _HostState] = {}
        self.active: dict[int, Task] = {}
        self.counts: dict[TaskState, int] = {s: 0 for s in TaskState}
        self.final: dict[int, TaskState] = {}
        self.unplaceable: dict[int, str] = {}
        self._reports: list[tuple[str, dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._jobs: set[asyncio.Task[Any]] = set()
        self._kills_sent: set[str] = set()
        self._token: tuple[int, ...] | None = None
        self._last_tick = 0.0
        self._stop = False
        self._placed_last = False

    # -- public ----------------------------------------------------------------------------------

    async def run(self) -> int:
        """Dispatch until done (or forever); returns the process exit code (0 ok, 1 failures)."""
        with dispatch_lock(self.store.path):
            return await self._run_locked()

    def request_stop(self) -> None:
        """Stop launching and return soon; running tasks keep running on their hosts."""
        self._stop = True
        self._wake.set()

    # -- main loop -------------------------------------------------------------------------------

    async def _run_locked(self) -> int:
        for order, spec in enumerate(self.config.hosts):
            if not spec.enabled:
                continue
            opts = ssh_options(spec, accept_new_host_keys=self.options.accept_new_host_keys)
            session = HostSession(spec, opts, self._on_exit_event, self._on_host_change)
            self.hosts[spec.name] = _HostState(session, order)
        runners = [asyncio.ensure_future(h.session.run()) for h in self.hosts.values()]
        try:
            await self._loop()
        finally:
            for job in list(self._jobs):
                job.cancel()
            await asyncio.gather(*(h.session.stop() for h in self.hosts.values()))
            for r in runners:
                r.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
        bad = [t for t, s in self.final.items() if s in (S.FAILED, S.LOST)]
        return 1 if bad or self.unplaceable else 0

    async def _loop(self) -> None:
        while True:
            timeout = self.options.idle_tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self.options.coalesce:
                await asyncio.sleep(self.options.coalesce)
            self._wake.clear()
            if self._stop:
                return
            self._tick()
            if self._done():
                return

    def _done(self) -> bool:
        if self.options.forever or self._jobs or self.active or self._reports:
            return False
        if any(h.session.status == "connecting" for h in self.hosts.values()):
            return False
        if any(h.session.status == "up" and not h.reconciled for h in self.hosts.values()):
            return False
        # Pending work that the last plan could not place, with nothing running that could free
        # capacity: report it (``unplaceable``) and stop rather than wait forever.
        return not (self.counts[S.PENDING] and self._placed_last)

    # -- the tick: one transaction ----------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        token = self.store.change_token()
        due = now - self._last_tick >= self.options.idle_tick
        if not (self._reports or token != self._token or due or self._needs_plan()):
            return
        self._last_tick = now
        launches: list[Task] = []
        with self.store.transaction() as tx:
            reports, self._reports = self._reports, []
            for host, report in reports:
                self._apply_report(tx, host, report)
            self._expire_unreachable(tx, now)
            self.active = {t.id: t for t in tx.tasks(states=ACTIVE_STATES)}
            self.counts = tx.counts()
            launches = self._place(tx)
            self.counts = tx.counts() if launches else self.counts
        self._token = self.store.change_token()
        for task in launches:
            self._spawn(self._launch(task))
        self._send_cancels()
        self._refresh_gpus(now)
        self.reporter.update(self._snapshot())

    def _needs_plan(self) -> bool:
        return bool(self.counts[S.PENDING]) and any(
            self._capacity(name).usable for name in self.hosts
        )

    # -- reports ---------------------------------------------------------------------------------

    def _on_exit_event(self, session: HostSession, report: dict[str, Any]) -> None:
        self._on_report(session.name, report)

    def _on_report(self, host: str, report: dict[str, Any]) -> None:
        if report.get("state") == "exited":
            self._spawn(self._collect(host, report))
        else:
            self._reports.append((host, report))
            self._wake.set()

    async def _collect(self, host: str, report: dict[str, Any]) -> None:
        run_id = str(report.get("run_id"))
        state = self.hosts[host]
        try:
            await self.collector.fetch(state.session, report)
        except DispatcherError as err:
            self.reporter.log(
                f"{host}: could not copy the log of run {run_id}: {err}", style="yellow"
            )
        self._reports.append((host, report))
        self._wake.set()

    def _apply_report(self, tx: Txn, host: str, report: dict[str, Any]) -> None:
        run_id = str(report.get("run_id"))
        task = next((t for t in self.active.values() if t.run_id == run_id), None)
        state = report.get("state")
        hs = self.hosts[host]
        if task is None or task.host != host:
            # Fenced: a run of an attempt we gave up on. Stop it if it still runs; tidy up after it.
            if state in ("running", "starting"):
                self._spawn(self._kill(host, run_id))
            elif state == "exited":
                self._spawn(self._cleanup(host, [run_id]))
            hs.orphans.discard(run_id)
            return
        if state in ("running", "starting"):
            if task.state is S.LAUNCHING:
                started = parse_time(report.get("started_at"))
                moved = tx.move(task.id, S.RUNNING, run_id=run_id, started_at=started)
                if moved:
                    self.active[task.id] = moved
        elif state == "exited":
            self._finish(tx, task, outcome_of(report, task))
            self._spawn(self._cleanup(host, [run_id]))
        elif state == "lost":
            self._finish(
                tx, task, lost_outcome(task, "its process vanished without an exit record")
            )
        elif state == "absent":
            if task.state is S.LAUNCHING:
                self._spawn(self._launch(task))  # never created: send the same run id again
            else:
                self._finish(tx, task, lost_outcome(task, "its run directory vanished"))
        elif state == "launch_error":
            moved = tx.move(
                task.id,
                S.PENDING,
                run_id=run_id,
                reason=f"launch on {host} failed: {report.get('error')}",
            )
            if moved:
                self.active.pop(task.id, None)
                self._count_failure(hs, now=time.monotonic())

    def _finish(self, tx: Txn, task: Task, outcome: Outcome) -> None:
        moved = tx.move(task.id, outcome.state, run_id=task.run_id, **outcome.fields)
        if moved is None:
            return
        self.active.pop(task.id, None)
        hs = self.hosts.get(task.host or "")
        now = time.monotonic()
        if hs is not None:
            for idx in task.gpu_ids or []:
                hs.released[idx] = now
            if outcome.counts_as_failure:
                self._count_failure(hs, now)
            elif outcome.state is S.SUCCEEDED:
                hs.failures.clear()
        final = outcome.state
        if outcome.fail_after_loss:
            tx.move(task.id, S.FAILED, reason=outcome.fail_after_loss)
            final = S.FAILED
        elif outcome.requeue_reason:
            tx.move(task.id, S.PENDING, reason=outcome.requeue_reason)
            final = S.PENDING
        self.final[task.id] = final
        word = {S.SUCCEEDED: "green", S.CANCELLED: "yellow"}.get(outcome.state, "red")
        note = f" ({outcome.fields.get('reason')})" if outcome.fields.get("reason") else ""
        self.reporter.log(f"task {task.id} {outcome.state} on {task.host}{note}", style=word)

    def _count_failure(self, hs: _HostState, now: float) -> None:
        spec = hs.session.spec
        if spec.suspend_after_failures <= 0:
            return
        hs.failures.append(now)
        while hs.failures and now - hs.failures[0] > spec.failure_window:
            hs.failures.popleft()
        if len(hs.failures) >= spec.suspend_after_failures and not hs.suspended:
            hs.suspended = (
                f"suspended after {len(hs.failures)} failures in a row; "
                f"fix the host, then `labtasker hosts resume {spec.name}` or restart dispatch"
            )
            self.reporter.log(f"{spec.name}: {hs.suspended}", style="bold red")

    def _expire_unreachable(self, tx: Txn, now: float) -> None:
        """Tasks on a host unreachable past its grace period are lost and requeued elsewhere."""
        for name, hs in self.hosts.items():
            s = hs.session
            if s.status == "up" or s.down_since is None:
                continue
            if now - s.down_since < s.spec.lost_after:
                continue
            for task in [t for t in self.active.values() if t.host == name]:
                if task.run_id:
                    hs.orphans.add(task.run_id)
                why = f"host unreachable for more than {s.spec.lost_after:g}s ({s.error})"
                self._finish(tx, task, lost_outcome(task, why))

    # -- placement -------------------------------------------------------------------------------

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

    def _place(self, tx: Txn) -> list[Task]:
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
        candidates = tx.pending_candidates(limit=free * 2 + 64)
        result = plan([Candidate(t.id, t.priority, t.gpus) for t in candidates], caps)
        by_id = {t.id: t for t in candidates}
        launches = []
        for placement in result.placements:
            task = by_id[placement.task_id]
            moved = tx.move(
                task.id,
                S.LAUNCHING,
                host=placement.host,
                gpu_ids=list(placement.gpu_ids),
                run_id=new_run_id(task),
                attempt=task.attempt + 1,
                reason=None,
                exit_code=None,
                result=None,
            )
            if moved:
                self.active[moved.id] = moved
                launches.append(moved)
        reasons = {**result.waiting, **result.impossible}
        if reasons:
            tx.set_reasons(reasons)
        self.unplaceable = dict(result.impossible)
        if not candidates and self.counts[S.PENDING]:
            self.unplaceable = {0: "pending tasks wait for dependencies that will not succeed"}
        elif not result.placements:
            self.unplaceable = {**result.waiting, **result.impossible}
        self._placed_last = bool(result.placements)
        return launches

    # -- host calls (async jobs) -----------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        job: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._jobs.add(job)

        def done(j: asyncio.Task[Any]) -> None:
            self._jobs.discard(j)
            if not j.cancelled() and j.exception() is not None:
                exc = j.exception()
                if not isinstance(exc, DispatcherError):
                    raise exc  # a bug: let asyncio report it loudly
                self.reporter.log(str(exc), style="yellow")
            self._wake.set()

        job.add_done_callback(done)

    async def _launch(self, task: Task) -> None:
        hs = self.hosts[task.host or ""]
        spec = hs.session.spec
        env = dict(spec.env)
        env.update(
            {
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # make CUDA's numbering match nvidia-smi's
                "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in task.gpu_ids or []),
                "LABTASKER_TASK_ID": str(task.id),
                "LABTASKER_RUN_ID": str(task.run_id),
                "LABTASKER_ATTEMPT": str(task.attempt),
                "LABTASKER_ARGS": json.dumps(task.args, ensure_ascii=False),
            }
        )
        launch = {
            "command": task.command,
            "setup": spec.setup,
            "workdir": spec.workdir,
            "env": env,
            "timeout": task.timeout,
            "kill_grace": spec.kill_grace,
            "task_id": task.id,
        }
        try:
            reply = await hs.session.call("launch", run_id=task.run_id, spec=launch)
        except (ConnectionLostError, TransportError):
            return  # outcome unknown: stays launching; the probe after reconnecting decides
        except RemoteError as err:
            self._on_report(
                task.host or "", {"run_id": task.run_id, "state": "launch_error", "error": str(err)}
            )
            return
        if reply.get("status") == "exists" and isinstance(reply.get("run"), dict):
            self._on_report(task.host or "", reply["run"])
        else:
            self._on_report(task.host or "", {"run_id": task.run_id, "state": "running"})

    async def _kill(self, host: str, run_id: str) -> None:
        hs = self.hosts[host]
        with contextlib.suppress(ConnectionLostError, TransportError):
            await hs.session.call("kill", run_id=run_id, grace=hs.session.spec.kill_grace)

    async def _cleanup(self, host: str, run_ids: list[str]) -> None:
        with contextlib.suppress(DispatcherError):
            await self.hosts[host].session.call("cleanup", runs=run_ids)

    def _send_cancels(self) -> None:
        for task in self.active.values():
            if not task.cancel_requested or not task.run_id or task.run_id in self._kills_sent:
                continue
            hs = self.hosts.get(task.host or "")
            if hs is None or not hs.session.up or task.state is not S.RUNNING:
                continue
            self._kills_sent.add(task.run_id)
            self.reporter.log(f"task {task.id}: cancelling on {task.host}", style="yellow")
            self._spawn(self._kill(task.host or "", task.run_id))

    def _refresh_gpus(self, now: float) -> None:
        if not self.counts[S.PENDING]:
            return
        for hs in self.hosts.values():
            s = hs.session
            if hs.refreshing or not s.up or not hs.reconciled or s.spec.gpus == ():
                continue
            if s.inventory and now - s.inventory.fetched_at < self.options.gpu_refresh:
                continue
            hs.refreshing = True
            self._spawn(self._refresh_one(hs))

    async def _refresh_one(self, hs: _HostState) -> None:
        try:
            await hs.session.refresh_gpus()
        finally:
            hs.refreshing = False

    # -- host (re)connection: reconcile before placing anything there ----------------------------

    def _on_host_change(self, session: HostSession) -> None:
        hs = self.hosts.get(session.name)
        if hs is None:
            return
        if session.status == "up":
            self.reporter.log(f"{session.name}: connected", style="green")
            hs.reconciled = False
            self._spawn(self._reconcile(hs))
        elif session.status == "down":
            hs.reconciled = False
            self.reporter.log(f"{session.error}", style="yellow")
        self._wake.set()

    async def _reconcile(self, hs: _HostState) -> None:
        """Ask the host about every run we think is there, then take its GPU inventory."""
        name = hs.session.name
        with self.store.transaction() as tx:
            mine = tx.tasks(states=ACTIVE_STATES, host=name)
        runs = [t.run_id for t in mine if t.run_id] + sorted(hs.orphans)
        try:
            if runs:
                reply = await hs.session.call("probe", runs=runs, timeout=60.0)
                for report in (reply.get("runs") or {}).values():
                    if isinstance(report, dict):
                        self._on_report(name, report)
            if hs.session.spec.gpus != ():
                await hs.session.refresh_gpus()
        except (ConnectionLostError, TransportError):
            return  # the session reconnects and we come back here
        hs.reconciled = True
        self._wake.set()

    def _snapshot(self) -> Snapshot:
        hosts = []
        for name, hs in self.hosts.items():
            n = sum(1 for t in self.active.values() if t.host == name)
            desc = hs.suspended or hs.session.describe()
            hosts.append((name, f"{desc}, {n} running" if hs.session.up else desc))
        ok = sum(1 for s in self.final.values() if s is S.SUCCEEDED)
        bad = sum(1 for s in self.final.values() if s in (S.FAILED, S.LOST))
        return Snapshot(dict(self.counts), hosts, ok, bad)
