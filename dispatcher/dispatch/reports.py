"""The dispatcher's host-side jobs: applying run reports, and every call it makes to a host.

``HostJobs`` is mixed into ``engine.Dispatcher``: it turns helper reports (exit events, launch
replies, probes) into state moves, and runs the asynchronous host calls (launch, kill, cleanup,
GPU refresh, reconcile after a (re)connect, tails of running runs for ``labtasker status``).
Reports are queued and applied by the engine's tick, inside its one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dispatcher.core.models import ACTIVE_STATES, Task, TaskState
from dispatcher.core.outcome import Outcome, lost_outcome, outcome_of, parse_time
from dispatcher.dispatch.hooks import HOOK_STATES, on_finish
from dispatcher.dispatch.logs import LogCollector, SavedLog, gpu_views, log_path, write_last_lines
from dispatcher.dispatch.recovery import crash_point
from dispatcher.errors import (
    ConnectionLostError,
    DispatcherError,
    ProtocolViolationError,
    RemoteError,
    TransportError,
)
from dispatcher.remote.session import HostSession
from dispatcher.store.queue import Store, Txn
from dispatcher.transport.outputs import describe, task_outputs_dir

if TYPE_CHECKING:
    from dispatcher.config.hosts import HostsConfig
    from dispatcher.dispatch.loop import DispatchOptions, Reporter

S = TaskState
#: A launch reply wakes a round after this long, so that under load it joins the next exit's.
RUNNING_WAKE = 0.1
#: A cancel's kill is sent again if no exit report came this long after its grace period.
KILL_AGAIN = 10.0


@dataclass
class HostState:
    """The dispatcher's bookkeeping for one host, next to its session."""

    session: HostSession
    order: int
    reconciled: bool = False
    refreshing: bool = False
    tailing: bool = False
    released: dict[int, float] = field(default_factory=dict)  # gpu index -> monotonic time
    failures: deque[float] = field(default_factory=deque)
    suspended: str | None = None
    orphans: set[str] = field(default_factory=set)  # run ids fenced off after a loss


class HostJobs:
    """Report handling and host calls of the dispatcher; see the module docstring."""

    store: Store
    config: HostsConfig
    reporter: Reporter
    options: DispatchOptions
    collector: LogCollector
    hosts: dict[str, HostState]
    active: dict[int, Task]
    counts: dict[TaskState, int]
    final: dict[int, TaskState]
    last_lines: dict[int, str]
    runtimes: list[float]  # seconds, of the tasks that succeeded in this run (for the ETA)
    _reports: list[tuple[str, dict[str, Any]]]
    _wake: asyncio.Event
    _jobs: set[asyncio.Task[Any]]
    _kills_sent: dict[str, float]  # run id -> when its cancel's kill was last sent (monotonic)
    _attach_queue: Callable[[], Awaitable[None]]
    _cleanups: dict[str, list[str]]  # host -> run ids to clean up after this round
    _resend: list[Task]  # launching tasks whose run was never created: launched again
    _last_tails: float
    _last_tick: float

    # -- reports ---------------------------------------------------------------------------------

    def _on_exit_event(self, session: HostSession, report: dict[str, Any]) -> None:
        self._on_report(session.name, report)

    def _on_report(self, host: str, report: dict[str, Any]) -> None:
        # The report passed the session's checks (remote/wire.py): its run id is a safe name,
        # and one this dispatcher launched or probed on that host.
        if report.get("state") == "exited":
            task, globs = self._outputs_of(host, str(report.get("run_id")))
            if globs or not self.collector.inline(report):
                self._spawn(self._collect(host, report))
                return
            try:  # the log came inline (or there is none) and no output files: no job needed
                self._log_saved(
                    host, self.collector.write_inline(report, self._max_log(host)), task
                )
            except (OSError, DispatcherError) as err:
                self.reporter.log(
                    f"{host}: could not save the log of run {report.get('run_id')}: {err}",
                    style="yellow",
                )
        self._reports.append((host, report))
        self._wake.set()

    async def _collect(self, host: str, report: dict[str, Any]) -> None:
        """Copy the log first, so a task is never final without its output on the controller."""
        run_id = str(report.get("run_id"))
        try:
            saved = await self.collector.fetch(
                self.hosts[host].session, report, self._max_log(host)
            )
            self._log_saved(host, saved, self._task_of(run_id))
        except ProtocolViolationError:
            return  # the host is dropped (the session says why); its probe reports this again
        except DispatcherError as err:
            self.reporter.log(
                f"{host}: could not copy the log of run {run_id}: {err}", style="yellow"
            )
        if not await self._copy_outputs(host, report):
            return  # connection lost: the probe after reconnecting reports this exit again
        self._reports.append((host, report))
        self._wake.set()

    def _max_log(self, host: str) -> int:
        return self.hosts[host].session.spec.max_log_size

    def _log_saved(self, host: str, saved: SavedLog | None, task: Task | None) -> None:
        """Say once per task that its log was cut to the host's ``max_log_size``."""
        if saved is not None and saved.first_cut:
            who = f"task {task.id}" if task is not None else "a task"
            self.reporter.log(f"{who} on {host}: {saved.note(self._max_log(host))}", style="yellow")

    def _task_of(self, run_id: str) -> Task | None:
        """The active task whose current run is ``run_id`` (None: not ours, or an old one)."""
        return next((t for t in self.active.values() if t.run_id == run_id), None)

    def _outputs_of(self, host: str, run_id: str) -> tuple[Task | None, list[str]]:
        """The task of ``run_id`` (None if not ours) and the output globs to copy for it."""
        task = self._task_of(run_id)
        return task, [*self.hosts[host].session.spec.outputs, *getattr(task, "outputs", ())]

    async def _copy_outputs(self, host: str, report: dict[str, Any]) -> bool:
        """Copy the task's output files (hosts.toml ``outputs`` and its own); False if the host
        went down meanwhile, so the exit must wait to be recorded with its outputs."""
        task, globs = self._outputs_of(host, str(report.get("run_id")))
        session = self.hosts[host].session
        if task is None or task.host != host or not globs or report.get("cancelled"):
            return True
        cap = session.spec.outputs_max_size
        try:
            got = await session.fetch_files(globs, task_outputs_dir(self.store.path, task.id), cap)
        except DispatcherError as err:
            if not session.up:
                return False
            self.reporter.log(f"task {task.id}: could not copy outputs: {err}", style="yellow")
            return True
        problem = describe(got, cap)
        if problem:
            self.reporter.log(f"task {task.id} on {host}: {problem}", style="yellow")
        return True

    def _apply_report(self, tx: Txn, host: str, report: dict[str, Any]) -> None:
        run_id = str(report.get("run_id"))
        task = self._task_of(run_id)
        state = report.get("state")
        hs = self.hosts[host]
        if task is None or task.host != host:
            # Fenced: a run of an attempt we gave up on. Stop it if it still runs; tidy up after it.
            if state in ("running", "starting"):
                self._spawn(self._kill(host, run_id))
            elif state == "exited":
                self._cleanups.setdefault(host, []).append(run_id)
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
            self._cleanups.setdefault(host, []).append(run_id)
        elif state == "lost":
            self._finish(
                tx, task, lost_outcome(task, "its process vanished without an exit record")
            )
        elif state == "absent":
            if task.state is S.LAUNCHING:
                self._resend.append(task)  # never created: send the same id again
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
        self._kills_sent.pop(task.run_id or "", None)
        self.last_lines.pop(task.id, None)
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
            moved = tx.move(task.id, S.FAILED, reason=outcome.fail_after_loss) or moved
            final = S.FAILED
        elif outcome.requeue_reason:
            tx.move(task.id, S.PENDING, reason=outcome.requeue_reason)
            final = S.PENDING
        self.final[task.id] = final
        if final is S.SUCCEEDED and moved.started_at and moved.finished_at:
            self.runtimes.append((moved.finished_at - moved.started_at).total_seconds())
        if self.config.on_finish and final in HOOK_STATES:
            log = log_path(self.collector.logs_dir, task.run_id) if task.run_id else None
            log = log if log is not None and log.exists() else None  # none: it printed nothing
            warn = functools.partial(self.reporter.log, style="yellow")
            hide = self.config.secret_names
            self._spawn(on_finish(self.config.on_finish, moved, final, log, warn, hide=hide))
        word = {S.SUCCEEDED: "green", S.CANCELLED: "yellow"}.get(outcome.state, "red")
        note = f" ({outcome.fields.get('reason')})" if outcome.fields.get("reason") else ""
        self.reporter.log(f"task {task.id} {outcome.state} on {task.host}{note}", style=word)

    def _count_failure(self, hs: HostState, now: float) -> None:
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

    # -- host calls (async jobs) -----------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        job: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._jobs.add(job)

        def done(j: asyncio.Task[Any]) -> None:
            self._jobs.discard(j)
            exc = None if j.cancelled() else j.exception()
            if exc is not None:
                if not isinstance(exc, DispatcherError):
                    raise exc  # a bug: let asyncio report it loudly
                if not isinstance(exc, ProtocolViolationError):  # the session says it, once
                    self.reporter.log(str(exc), style="yellow")
            self._wake.set()

        job.add_done_callback(done)

    def _launch_spec(self, task: Task) -> dict[str, Any]:
        spec = self.hosts[task.host or ""].session.spec
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
        return {
            "command": task.command,
            "setup": spec.setup,
            "workdir": spec.workdir,
            "env": env,
            "timeout": task.timeout,
            "kill_grace": spec.kill_grace,
            "task_id": task.id,
        }

    async def _launch(self, host: str, tasks: list[Task]) -> None:
        """Launch ``tasks`` (all placed on ``host``) in one request."""
        hs = self.hosts[host]
        runs = [{"run_id": t.run_id, "spec": self._launch_spec(t)} for t in tasks]
        try:
            reply = await hs.session.call("launches", runs=runs)
        except (ConnectionLostError, TransportError, ProtocolViolationError):
            return  # outcome unknown: they stay launching; the probe after reconnecting decides
        except RemoteError as err:
            for t in tasks:
                report = {"run_id": t.run_id, "state": "launch_error", "error": str(err)}
                self._on_report(host, report)
            return
        crash_point("sent")  # test hook: die with the runs started, their start unrecorded
        results = reply.get("runs") or {}
        for t in tasks:
            got = results.get(t.run_id)
            got = got if isinstance(got, dict) else {"status": "error", "error": "no reply"}
            if got.get("status") == "exists" and isinstance(got.get("run"), dict):
                self._on_report(host, got["run"])  # an exit is collected (log, outputs) first
                continue
            if got.get("status") == "started":
                report = {"run_id": t.run_id, "state": "running"}
            else:
                error = f"{host}: {got.get('error')}"
                report = {"run_id": t.run_id, "state": "launch_error", "error": error}
            self._reports.append((host, report))
        # Recording "running" can wait for the next round (an exit's, most often) when busy.
        asyncio.get_running_loop().call_later(RUNNING_WAKE, self._wake.set)

    async def _kill(self, host: str, run_id: str) -> None:
        hs = self.hosts[host]
        try:
            await hs.session.call("kill", run_id=run_id, grace=hs.session.spec.kill_grace)
        except (ConnectionLostError, TransportError):
            # Not delivered, or not confirmed: a cancel is sent again once the host is back.
            self._kills_sent.pop(run_id, None)

    async def _cleanup(self, host: str, run_ids: list[str]) -> None:
        with contextlib.suppress(DispatcherError):
            await self.hosts[host].session.call("cleanup", runs=run_ids)

    def _send_launches(self, placed: list[Task]) -> None:
        """One ``launches`` request per host for the round's placements and re-sent launches."""
        tasks, self._resend = [*placed, *self._resend], []
        by_host: dict[str, list[Task]] = {}
        for task in tasks:
            by_host.setdefault(task.host or "", []).append(task)
        for host, group in by_host.items():
            self._spawn(self._launch(host, group))

    def _send_cleanups(self) -> None:
        """One ``cleanup`` request per host for the runs whose exits this round recorded."""
        cleanups, self._cleanups = self._cleanups, {}
        for host, run_ids in cleanups.items():
            self._spawn(self._cleanup(host, run_ids))

    def _send_cancels(self) -> None:
        """Send the kill of each cancelled running task; again after a failed or unconfirmed
        one (the connection dropped), after a reconnect, and every ``kill_grace`` +
        ``KILL_AGAIN`` s until its exit report (the host's confirmation) ends the task."""
        now = time.monotonic()
        for task in self.active.values():
            if not task.cancel_requested or not task.run_id:
                continue
            hs = self.hosts.get(task.host or "")
            if hs is None or not hs.session.up or task.state is not S.RUNNING:
                continue
            sent = self._kills_sent.get(task.run_id)
            if sent is not None and now - sent < hs.session.spec.kill_grace + KILL_AGAIN:
                continue
            self._kills_sent[task.run_id] = now
            again = " again" if sent is not None else ""
            self.reporter.log(f"task {task.id}: cancelling{again} on {task.host}", style="yellow")
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

    async def _refresh_one(self, hs: HostState) -> None:
        try:
            await hs.session.refresh_gpus()
        finally:
            hs.refreshing = False

    # -- last output lines for `labtasker status` ------------------------------------------------

    def _poll_tails(self, now: float) -> None:
        """Every ``tail_interval`` s, one ``tail`` call per host for all its running runs."""
        if now - self._last_tails < self.options.tail_interval:
            return
        self._last_tails = now
        for name, hs in self.hosts.items():
            runs = {
                t.run_id: t.id
                for t in self.active.values()
                if t.host == name and t.run_id and t.state is S.RUNNING
            }
            if runs and hs.session.up and not hs.tailing:
                hs.tailing = True
                self._spawn(self._tail_one(hs, runs))
        # Written every interval, changed or not: its time stamp tells `status` we are alive.
        self.last_lines = {k: v for k, v in self.last_lines.items() if k in self.active}
        self._write_tails()

    async def _tail_one(self, hs: HostState, runs: dict[str, int]) -> None:
        try:
            reply = await hs.session.call("tail", runs=sorted(runs), bytes=4096, timeout=10.0)
        except (ConnectionLostError, TransportError, ProtocolViolationError):
            return
        finally:
            hs.tailing = False
        for run_id, line in (reply.get("lines") or {}).items():
            task_id = runs.get(run_id)
            if task_id in self.active and isinstance(line, str):
                self.last_lines[task_id] = line
        self._write_tails()

    def _write_tails(self) -> None:
        try:
            views = gpu_views(
                (h.session for h in self.hosts.values()), self.active.values(), time.monotonic()
            )
            write_last_lines(self.store.path, self.last_lines, hosts=views)
        except OSError as err:
            self.reporter.log(f"could not record last output lines: {err}", style="yellow")

    # -- host (re)connection: reconcile before placing anything there ----------------------------

    def _on_host_change(self, session: HostSession) -> None:
        hs = self.hosts.get(session.name)
        if hs is None:
            return
        if session.status == "up":
            self.reporter.log(f"{session.name}: connected", style="green")
            hs.reconciled = False
            for task in self.active.values():  # kills sent before may never have arrived
                if task.host == session.name and task.run_id:
                    self._kills_sent.pop(task.run_id, None)
            self._spawn(self._reconcile(hs))
        elif session.status == "down":
            hs.reconciled = False
            self.reporter.log(f"{session.error}", style="yellow")
            # Re-plan at once: pending tasks' reasons must say why the host failed, not the
            # "connecting" of the plan made before it did (dispatch may end on this tick).
            self._last_tick = 0.0
        self._wake.set()

    async def _reconcile(self, hs: HostState) -> None:
        """Ask the host about every run we think is there, then take its GPU inventory."""
        name = hs.session.name
        await self._attach_queue()
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
        except (ConnectionLostError, TransportError, ProtocolViolationError):
            return  # the session reconnects and we come back here
        hs.reconciled = True
        self._wake.set()
