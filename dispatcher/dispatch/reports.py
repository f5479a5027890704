"""Report handling: turning what hosts report about runs into task moves.

``Reports`` owns the queue of reports received (exit events, launch replies, probes) until the
loop's tick applies them inside its one transaction, and what applying them leaves to do once
that transaction commits: the runs to clean up, the launches to send again and the stray runs
(of attempts given up on) to stop. An exit's log and output files are copied to the controller
before its report is queued, so a task is never final without its output. It calls no host
except to copy those; the loop hands its lists to the host calls (``dispatch/hostcalls.py``).
"""

from __future__ import annotations

import functools
import time
from collections import deque
from typing import Any

from dispatcher.config.hosts import HostsConfig
from dispatcher.core.globs import expand_all
from dispatcher.core.models import Task, TaskState
from dispatcher.core.outcome import (
    Outcome,
    launch_error_outcome,
    lost_outcome,
    outcome_of,
    parse_time,
    real_attempts,
    withdrawn_outcome,
)
from dispatcher.core.words import command_fault, plural, resume_hint
from dispatcher.dispatch.cluster import job_of
from dispatcher.dispatch.hooks import HOOK_STATES, on_finish
from dispatcher.dispatch.jobs import Jobs
from dispatcher.dispatch.logs import LogCollector, SavedLog, log_path
from dispatcher.dispatch.state import HostState, Log, LoopState
from dispatcher.errors import DispatcherError, ProtocolViolationError
from dispatcher.remote.session import HostSession
from dispatcher.remote.ship import run_workdir
from dispatcher.store.depends import deps_met
from dispatcher.store.move import UNSET
from dispatcher.store.queue import Store, Txn
from dispatcher.transport.outputs import describe, task_outputs_dir

S = TaskState
Report = tuple[str, dict[str, Any]]  # (host, the helper's report on one run)


class Reports:
    """Receives run reports and applies them; see the module docstring."""

    def __init__(
        self,
        state: LoopState,
        store: Store,
        config: HostsConfig,
        reporter: Log,
        collector: LogCollector,
        jobs: Jobs,
    ) -> None:
        self.state = state
        self.store = store
        self.config = config
        self.reporter = reporter
        self.collector = collector
        self.jobs = jobs
        self._queue: list[Report] = []
        self._cleanups: dict[str, list[str]] = {}  # host -> run ids to clean up after the round
        self._resend: list[Task] = []  # launching tasks whose run was never created
        self._strays: list[tuple[str, str]] = []  # (host, run id) of fenced runs still running

    # -- what the loop takes ---------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """How many reports wait for the next tick."""
        return len(self._queue)

    def take(self) -> list[Report]:
        """The reports received since the last call, for the tick to apply."""
        reports, self._queue = self._queue, []
        return reports

    def take_cleanups(self) -> dict[str, list[str]]:
        """Host -> the run ids whose exits were recorded since the last call."""
        cleanups, self._cleanups = self._cleanups, {}
        return cleanups

    def take_resends(self) -> list[Task]:
        """Launching tasks whose run the host never created: to be launched again (same id)."""
        resend, self._resend = self._resend, []
        return resend

    def take_strays(self) -> list[tuple[str, str]]:
        """(host, run id) of runs of attempts given up on that still run: to be stopped."""
        strays, self._strays = self._strays, []
        return strays

    def queue(self, host: str, report: dict[str, Any]) -> None:
        """Queue a report (no log to copy) without waking the loop."""
        self._queue.append((host, report))

    # -- receiving -------------------------------------------------------------------------------

    def on_exit_event(self, session: HostSession, report: dict[str, Any]) -> None:
        """The sessions' callback for exit events."""
        self.receive(session.name, report)

    def receive(self, host: str, report: dict[str, Any]) -> None:
        """Queue a report and wake the loop; an exit's log and outputs are copied first."""
        # The report passed the session's checks (remote/wire.py): its run id is a safe name,
        # and one this dispatcher launched or probed on that host.
        if report.get("state") == "exited" and not report.get("withdrawn"):  # it never ran
            task, globs = self._outputs_of(host, str(report.get("run_id")))
            if globs or not self.collector.inline(report):
                self.jobs.spawn(self._collect(host, report))
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
        self._queue.append((host, report))
        self.state.wake.set()

    async def _collect(self, host: str, report: dict[str, Any]) -> None:
        """Copy the log first, so a task is never final without its output on the controller."""
        run_id = str(report.get("run_id"))
        try:
            saved = await self.collector.fetch(
                self.state.hosts[host].session, report, self._max_log(host)
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
        self._queue.append((host, report))
        self.state.wake.set()

    def _max_log(self, host: str) -> int:
        return self.state.hosts[host].session.spec.max_log_size

    def _log_saved(self, host: str, saved: SavedLog | None, task: Task | None) -> None:
        """Say once per task that its log was cut to the host's ``max_log_size``."""
        if saved is not None and saved.first_cut:
            who = f"task {task.id}" if task is not None else "a task"
            self.reporter.log(f"{who} on {host}: {saved.note(self._max_log(host))}", style="yellow")

    def _task_of(self, run_id: str) -> Task | None:
        """The active task whose current run is ``run_id`` (None: not ours, or an old one)."""
        return next((t for t in self.state.active.values() if t.run_id == run_id), None)

    def _outputs_of(self, host: str, run_id: str) -> tuple[Task | None, list[str]]:
        """The task of ``run_id`` (None if not ours) and the output globs to copy for it."""
        task = self._task_of(run_id)
        return task, [*self.state.hosts[host].session.spec.outputs, *getattr(task, "outputs", ())]

    async def _copy_outputs(self, host: str, report: dict[str, Any]) -> bool:
        """Copy the task's output files (hosts.toml ``outputs`` and its own); False if the host
        went down meanwhile, so the exit must wait to be recorded with its outputs."""
        task, globs = self._outputs_of(host, str(report.get("run_id")))
        session = self.state.hosts[host].session
        if task is None or task.host != host or not globs or report.get("cancelled"):
            return True
        cap = session.spec.outputs_max_size
        # Each task's own values fill the globs' placeholders: in a shared working directory,
        # out/%{lr}/*.json copies this task's files only.
        globs, problems = expand_all(globs, task.args, task.id, str(task.run_id))
        for bad in problems:
            self.reporter.log(f"task {task.id} on {host}: not copied: {bad}", style="yellow")
        try:
            shipped = task.snapshot and session.spec.sync  # it ran in a directory of its own
            root = run_workdir(session, str(task.run_id)) if shipped else None
            local = task_outputs_dir(self.store.path, task.id)
            got = await session.fetch_files(globs, local, cap, root)
        except DispatcherError as err:
            if not session.up:
                return False
            self.reporter.log(f"task {task.id}: could not copy outputs: {err}", style="yellow")
            return True
        problem = describe(got, cap)
        if problem:
            self.reporter.log(f"task {task.id} on {host}: {problem}", style="yellow")
        return True

    # -- applying (inside the tick's transaction) -----------------------------------------------

    def apply(self, tx: Txn, host: str, report: dict[str, Any]) -> None:
        """Apply one report: the task's move, and what is left to do after the round."""
        run_id = str(report.get("run_id"))
        task = self._task_of(run_id)
        state = report.get("state")
        hs = self.state.hosts[host]
        if task is None or task.host != host:
            # Fenced: a run of an attempt we gave up on. Stop it if it still runs; tidy up after it.
            if state in ("running", "starting"):
                self._strays.append((host, run_id))
            elif state == "exited":
                self._cleanups.setdefault(host, []).append(run_id)
            hs.orphans.discard(run_id)
            return
        if state in ("running", "starting"):
            if task.state is S.LAUNCHING:
                started = parse_time(report.get("started_at"))
                moved = tx.move(task.id, S.RUNNING, run_id=run_id, started_at=started)
                if moved:
                    self.state.active[task.id] = task = moved
            job, why = job_of(report)
            if job is not None and (job, why) != (task.job_id, task.reason):
                tx.set_job(task.id, run_id, job, why)
                self.state.active[task.id] = task.replace(job_id=job, reason=why)
        elif withdrawn := report.get("withdrawn"):  # submitted ahead: never started its task
            if not isinstance(withdrawn, str):
                withdrawn = f"its submission was refused ({report.get('error')})"
            gated = self.state.gates.pop(task.id, [])
            self.state.held_back[task.id] = frozenset(g.run_id for g in gated)
            self._finish(tx, task, withdrawn_outcome(task, withdrawn))
            self._cleanups.setdefault(host, []).append(run_id)
        elif state == "exited":
            self._finish(tx, task, outcome_of(report, task))
            self._cleanups.setdefault(host, []).append(run_id)
        elif state == "lost":
            why = report.get("error") if report.get("job_id") else None  # SLURM said why
            why = why or "its process vanished without an exit record"
            self._finish(tx, task, lost_outcome(task, str(why)))
        elif state == "absent":
            if task.state is S.LAUNCHING and (task.id in self.state.gates or deps_met(tx, task)):
                self._resend.append(task)  # never created: send the same id again
            elif task.state is S.LAUNCHING:  # submitted ahead before a restart: gates unknown
                why = "its dependencies' runs were not known after dispatch restarted"
                self._finish(tx, task, withdrawn_outcome(task, why))
            else:
                self._finish(tx, task, lost_outcome(task, "its run directory vanished"))
        elif state == "launch_error":
            outcome = launch_error_outcome(task, host, str(report.get("error")))
            if outcome.state is S.FAILED:  # failed the same way too often: give up, say why
                self._finish(tx, task, outcome)
                self._count_failure(hs, time.monotonic(), task.id, "launch failed")
                return
            moved = tx.move(task.id, S.PENDING, run_id=run_id, **outcome.fields)
            if moved:
                self.state.active.pop(task.id, None)
                self._count_failure(hs, time.monotonic(), task.id, "launch failed")

    def _finish(self, tx: Txn, task: Task, outcome: Outcome) -> None:
        moved = tx.move(task.id, outcome.state, run_id=task.run_id, **outcome.fields)
        if moved is None:
            return
        self.state.active.pop(task.id, None)
        self.state.last_lines.pop(task.id, None)
        hs = self.state.hosts.get(task.host or "")
        now = time.monotonic()
        if hs is not None:
            for idx in task.gpu_ids or []:
                hs.released[idx] = now
            if outcome.counts_as_failure:
                self._count_failure(hs, now, task.id, str(outcome.fields.get("reason")))
            elif outcome.state is S.SUCCEEDED:
                hs.failures.clear()
        final = outcome.state
        if outcome.fail_after_loss:
            moved = tx.move(task.id, S.FAILED, reason=outcome.fail_after_loss) or moved
            final = S.FAILED
        elif outcome.requeue_reason:
            bigger = self._oom_needs(task) if outcome.cuda_oom else {}
            memory, floor = bigger.get("gpu_memory", UNSET), bigger.get("min_gpu_memory", UNSET)
            tx.move(task.id, S.PENDING, reason=outcome.requeue_reason, gpu_memory=memory,
                    min_gpu_memory=floor)  # fmt: skip
            final = S.PENDING
        self.state.final[task.id] = final
        if final is S.SUCCEEDED and moved.started_at and moved.finished_at:
            self.state.runtimes.append((moved.finished_at - moved.started_at).total_seconds())
        if self.config.on_finish and final in HOOK_STATES:
            log = log_path(self.collector.logs_dir, task.run_id) if task.run_id else None
            log = log if log is not None and log.exists() else None  # none: it printed nothing
            warn = functools.partial(self.reporter.log, style="yellow")
            hide = self.config.secret_names
            self.jobs.spawn(on_finish(self.config.on_finish, moved, final, log, warn, hide=hide))
        word = {S.SUCCEEDED: "green", S.CANCELLED: "yellow"}.get(outcome.state, "red")
        note = f" ({outcome.fields.get('reason')})" if outcome.fields.get("reason") else ""
        if task.max_attempts > 1 and outcome.counts_as_failure:  # which try of a retried task
            note = f", attempt {real_attempts(task)}/{task.max_attempts}{note}"
        self.reporter.log(f"task {task.id} {outcome.state} on {task.host}{note}", style=word)

    def _oom_needs(self, task: Task) -> dict[str, int]:
        """GPU needs that send a CUDA out-of-memory retry to a GPU with more memory for it,
        from the host's last GPU reading (what the task held, what was free for it)."""
        from dispatcher.core.gpu_packing import oom_retry_needs
        from dispatcher.dispatch.capacity import MIB, gpu_info

        hs = self.state.hosts.get(task.host or "")
        if hs is None or hs.session.inventory is None or not task.gpu_ids:
            return {}
        inv = hs.session.inventory
        others: dict[int, list[Task]] = {}
        for t in self.state.active.values():
            for i in t.gpu_ids or [] if t.host == task.host and t.id != task.id else []:
                others.setdefault(i, []).append(t)
        mine = [p for p in inv.processes if p.get("run_id") == task.run_id]
        inventory = {"gpus": inv.gpus, "processes": [p for p in inv.processes if p not in mine]}
        held, free, total = 0, None, None  # over its GPUs: the most it held, the least room
        for g in inv.gpus:
            if g.get("index") not in task.gpu_ids:
                continue
            on = [p.get("used_memory_mib") for p in mine if p.get("gpu_uuid") == g.get("uuid")]
            used = int(sum(m for m in on if isinstance(m, int | float)) * MIB)
            info = gpu_info(hs.session.spec, g, g["index"], inventory, others, stale=False)
            held = max(held, used)
            if info.room is not None:  # its own use counted as someone else's: give it back
                room = min(info.room + used, info.total or info.room + used)
                free = room if free is None else min(free, room)
            if info.total is not None:
                total = info.total if total is None else min(total, info.total)
        return oom_retry_needs(task.gpu_memory, task.min_gpu_memory, held, free, total)

    def _count_failure(self, hs: HostState, now: float, task_id: int, why: str) -> None:
        """Suspend a host after ``suspend_after_failures`` failures in a row, unless the tasks
        fail the same way on every host: then the command is the problem, not the host."""
        faults = self.state.command_faults
        if why in faults:  # known to be the command's: no evidence against the host
            faults[why].append(task_id)
            return
        spec = hs.session.spec
        if spec.suspend_after_failures <= 0:
            return
        hs.failures.append((now, why, task_id))
        while hs.failures and now - hs.failures[0][0] > spec.failure_window:
            hs.failures.popleft()
        if len(hs.failures) < spec.suspend_after_failures or hs.suspended:
            return
        others = [
            o for o in self.state.hosts.values() if o is not hs and o.session.up and not o.suspended
        ]
        whys = {w for _, w, _ in hs.failures}
        if whys == {why} and all(o.failures and o.failures[-1][1] == why for o in others):
            seen = [f for o in self.state.hosts.values() for f in o.failures if f[1] == why]
            faults[why] = [i for _, _, i in sorted(seen)]
            for o in self.state.hosts.values():
                o.failures = deque(f for f in o.failures if f[1] != why)
            self.reporter.log(command_fault(why, faults[why][0]), style="bold red")
            return
        hs.suspended = f"suspended after {plural(len(hs.failures), 'failure')} in a row ({why})"
        self.reporter.log(
            f"{spec.name}: {hs.suspended}; {resume_hint(spec.name)}", style="bold red"
        )

    def expire_unreachable(self, tx: Txn, now: float) -> None:
        """Tasks on a host unreachable past its grace period are lost and requeued elsewhere."""
        for name, hs in self.state.hosts.items():
            s = hs.session
            if s.status == "up" or s.down_since is None:
                continue
            if now - s.down_since < s.spec.lost_after:
                continue
            for task in [t for t in self.state.active.values() if t.host == name]:
                if task.run_id:
                    hs.orphans.add(task.run_id)
                why = f"host unreachable for more than {s.spec.lost_after:g}s ({s.error})"
                self._finish(tx, task, lost_outcome(task, why))
