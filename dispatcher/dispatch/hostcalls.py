"""Host calls: every request the dispatcher sends to a host, each as a background job.

``HostCalls`` launches runs (one request per host and round), kills cancelled ones (and sends
the kill again until the exit confirms it), cleans up finished runs, refreshes GPU inventories,
fetches the running tasks' last output lines for ``labtasker status`` and, after a host
(re)connects, reconciles: it asks the host about every run it should hold before anything is
placed there. It owns the kills sent and the tail timing; replies that are run reports go to
report handling (``dispatch/reports.py``), which the loop's tick applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dispatcher.config.paths import snapshots_dir
from dispatcher.config.sync import NO_SYNC
from dispatcher.core.models import ACTIVE_STATES, Task, TaskState
from dispatcher.core.words import plural
from dispatcher.dispatch.cluster import slurm_launch
from dispatcher.dispatch.jobs import Jobs
from dispatcher.dispatch.logs import gpu_views, write_last_lines
from dispatcher.dispatch.recovery import crash_point
from dispatcher.dispatch.reports import Reports
from dispatcher.dispatch.state import DispatchOptions, HostState, Log, LoopState
from dispatcher.errors import (
    ConnectionLostError,
    DispatcherError,
    ProtocolViolationError,
    RemoteError,
    SnapshotError,
    TransportError,
)
from dispatcher.remote.session import HostSession
from dispatcher.remote.ship import Shipper, collect, describe_collected
from dispatcher.snapshot.blobs import BlobStore
from dispatcher.store.queue import Store

S = TaskState
#: A launch reply wakes a round after this long, so that under load it joins the next exit's.
RUNNING_WAKE = 0.1
#: A cancel's kill is sent again if no exit report came this long after its grace period.
KILL_AGAIN = 10.0


class HostCalls:
    """The dispatcher's calls to its hosts; see the module docstring."""

    def __init__(
        self,
        state: LoopState,
        store: Store,
        options: DispatchOptions,
        reporter: Log,
        jobs: Jobs,
        reports: Reports,
        attach_queue: Callable[[], Awaitable[None]],
        keep: float = NO_SYNC.keep,
    ) -> None:
        self.state = state
        self.store = store
        self.options = options
        self.reporter = reporter
        self.jobs = jobs
        self.reports = reports
        self._attach_queue = attach_queue  # waits until the queue file is ours (the loop's)
        self._kills_sent: dict[str, float] = {}  # run id -> when its cancel's kill was last sent
        self._last_tails = 0.0
        self.shipper = Shipper(BlobStore(snapshots_dir(store.path)))
        self.keep = keep  # [sync] keep: how long ended runs' directories stay on their hosts

    def _launch_spec(self, task: Task) -> dict[str, Any]:
        spec = self.state.hosts[task.host or ""].session.spec
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
        slurm = slurm_launch(spec, task, self.state.gates.get(task.id, ()))
        if slurm is not None:
            env.pop("CUDA_VISIBLE_DEVICES")  # SLURM gives the job its GPUs
        return {
            "command": task.command,
            "setup": spec.setup,
            "workdir": spec.workdir,
            "env": env,
            "timeout": task.timeout,
            "kill_grace": spec.kill_grace,
            "task_id": task.id,
            "host": task.host,  # messages from the host name it as hosts.toml does
            "snapshot": task.snapshot if spec.sync else None,  # its own working directory there
        } | ({"slurm": slurm} if slurm is not None else {})

    async def _launch(self, host: str, tasks: list[Task], again: bool = True) -> None:
        """Launch ``tasks`` (all placed on ``host``) in one request; those whose snapshot the
        host no longer has (``hosts gc`` removed it meanwhile) are shipped and sent once more
        when ``again``."""
        hs = self.state.hosts[host]
        try:
            tasks = await self._ship(hs.session, tasks)
            runs = [{"run_id": t.run_id, "spec": self._launch_spec(t)} for t in tasks]
            reply = await hs.session.call("launches", runs=runs) if runs else {}
        except (ConnectionLostError, TransportError, ProtocolViolationError):
            return  # outcome unknown: they stay launching; the probe after reconnecting decides
        except RemoteError as err:
            for t in tasks:
                report = {"run_id": t.run_id, "state": "launch_error", "error": str(err)}
                self.reports.receive(host, report)
            return
        crash_point("sent")  # test hook: die with the runs started, their start unrecorded
        results = reply.get("runs") or {}
        gone = [t for t in tasks if again and (results.get(t.run_id) or {}).get("snapshot_missing")]
        for t in gone:
            self.shipper.forget(hs.session, str(t.snapshot))
        if gone:
            self.jobs.spawn(self._launch(host, gone, again=False))
        resent = {t.run_id for t in gone}
        for t in tasks:
            if t.run_id in resent:
                continue
            got = results.get(t.run_id)
            got = got if isinstance(got, dict) else {"status": "error", "error": "no reply"}
            if got.get("status") == "exists" and isinstance(got.get("run"), dict):
                self.reports.receive(host, got["run"])  # an exit is collected (log, outputs) first
                continue
            if got.get("status") == "started":
                report = {"run_id": t.run_id, "state": "running", "job_id": got.get("job_id")}
            else:
                error = f"{host}: {got.get('error')}"
                report = {"run_id": t.run_id, "state": "launch_error", "error": error}
                if got.get("withdrawn"):  # submitted ahead: the controller waits instead
                    report["withdrawn"] = error
            self.reports.queue(host, report)
        # Recording "running" can wait for the next round (an exit's, most often) when busy.
        asyncio.get_running_loop().call_later(RUNNING_WAKE, self.state.wake.set)

    async def _ship(self, session: HostSession, tasks: list[Task]) -> list[Task]:
        """Send the snapshots of ``tasks`` the host lacks (hosts with ``sync``); the tasks
        whose snapshot is there. A snapshot that cannot be sent fails its tasks' launch."""
        if not session.spec.sync:
            return tasks
        failed: dict[str, str] = {}
        for snapshot in dict.fromkeys(t.snapshot for t in tasks if t.snapshot):
            start = time.monotonic()
            try:
                sent = await self.shipper.ensure(session, snapshot)
            except (RemoteError, SnapshotError) as err:
                if isinstance(err, ProtocolViolationError):
                    raise
                failed[snapshot] = str(err)
                continue
            if sent.wire:
                self.reporter.log(
                    f"{session.name}: snapshot {snapshot[:12]} sent: {plural(sent.blobs, 'file')},"
                    f" {sent.bytes} bytes ({sent.wire} on the wire)"
                    f" in {time.monotonic() - start:.2f} s"
                )
        for t in tasks:
            if t.snapshot in failed:
                report = {"run_id": t.run_id, "state": "launch_error", "error": failed[t.snapshot]}
                self.reports.receive(session.name, report)
        return [t for t in tasks if t.snapshot not in failed]

    async def _kill(self, host: str, run_id: str, stray: bool = False) -> None:
        hs = self.state.hosts[host]
        try:
            await hs.session.call("kill", run_id=run_id, grace=hs.session.spec.kill_grace,
                                  stray=stray)  # fmt: skip
        except (ConnectionLostError, TransportError):
            # Not delivered, or not confirmed: a cancel is sent again once the host is back.
            self._kills_sent.pop(run_id, None)

    async def _cleanup(self, host: str, run_ids: list[str]) -> None:
        with contextlib.suppress(DispatcherError):
            await self.state.hosts[host].session.call("cleanup", runs=run_ids)

    def send_launches(self, tasks: list[Task]) -> None:
        """One ``launches`` request per host for the round's placements and re-sent launches."""
        by_host: dict[str, list[Task]] = {}
        for task in tasks:
            by_host.setdefault(task.host or "", []).append(task)
        for host, group in by_host.items():
            self.jobs.spawn(self._launch(host, group))

    def send_cleanups(self, cleanups: dict[str, list[str]]) -> None:
        """One ``cleanup`` request per host for the runs whose exits this round recorded."""
        for host, run_ids in cleanups.items():
            self.jobs.spawn(self._cleanup(host, run_ids))

    def stop_runs(self, runs: list[tuple[str, str]]) -> None:
        """Kill each (host, run id): runs of attempts given up on that still run."""
        for host, run_id in runs:
            self.jobs.spawn(self._kill(host, run_id, stray=True))

    def send_cancels(self) -> None:
        """Send the kill of each cancelled running task; again after a failed or unconfirmed
        one (the connection dropped), after a reconnect, and every ``kill_grace`` +
        ``KILL_AGAIN`` s until its exit report (the host's confirmation) ends the task."""
        now = time.monotonic()
        if self._kills_sent:  # forget the kills of runs that ended (their tasks left ``active``)
            live = {t.run_id for t in self.state.active.values()}
            self._kills_sent = {r: at for r, at in self._kills_sent.items() if r in live}
        for task in self.state.active.values():
            if not task.cancel_requested or not task.run_id:
                continue
            hs = self.state.hosts.get(task.host or "")
            if hs is None or not hs.session.up or task.state is not S.RUNNING:
                continue
            sent = self._kills_sent.get(task.run_id)
            if sent is not None and now - sent < hs.session.spec.kill_grace + KILL_AGAIN:
                continue
            self._kills_sent[task.run_id] = now
            again = " again" if sent is not None else ""
            self.reporter.log(f"task {task.id}: cancelling{again} on {task.host}", style="yellow")
            self.jobs.spawn(self._kill(task.host or "", task.run_id))

    def refresh_gpus(self, now: float) -> None:
        """Ask nvidia-smi again on hosts whose inventory is older than ``gpu_refresh``: on every
        host while tasks are pending (placement needs it), else on the hosts our tasks run on
        (the status file's GPU view stays fresh). Never more often than ``gpu_refresh`` per host,
        so a lab server is not polled harder while a sweep runs."""
        pending = bool(self.state.counts[S.PENDING])
        busy = {t.host for t in self.state.active.values()}
        for name, hs in self.state.hosts.items():
            s = hs.session
            if hs.refreshing or not s.up or not hs.reconciled or s.spec.gpus == ():
                continue
            if not pending and name not in busy:
                continue
            if s.inventory and now - s.inventory.fetched_at < self.options.gpu_refresh:
                continue
            hs.refreshing = True
            self.jobs.spawn(self._refresh_one(hs))

    async def _refresh_one(self, hs: HostState) -> None:
        try:
            await hs.session.refresh_gpus()
        finally:
            hs.refreshing = False
        self.write_status()  # `status --watch` shows the new reading now

    def poll_jobs(self, now: float) -> None:
        """Every ``poll_interval`` s, one ``probe`` per cluster for its runs: what SLURM says
        of each job (pending and why) reaches the queue; their ends come as exit events."""
        for name, hs in self.state.hosts.items():
            spec = hs.session.spec.slurm
            if spec is None or not hs.session.up or not hs.reconciled or hs.polling:
                continue
            if now - hs.polled_jobs < spec.poll_interval:
                continue
            runs = [t.run_id for t in self.state.active.values() if t.host == name and t.run_id]
            if runs:
                hs.polled_jobs, hs.polling = now, True
                self.jobs.spawn(self._poll_one(hs, runs))

    async def _poll_one(self, hs: HostState, runs: list[str]) -> None:
        try:
            reply = await hs.session.call("probe", runs=runs, timeout=60.0)
        except (ConnectionLostError, TransportError, ProtocolViolationError):
            return
        finally:
            hs.polling = False
        for report in (reply.get("runs") or {}).values():
            if isinstance(report, dict) and report.get("state") in ("starting", "running"):
                self.reports.receive(hs.session.name, report)

    # -- last output lines for `labtasker status` ------------------------------------------------

    def poll_tails(self, now: float) -> None:
        """Every ``tail_interval`` s, one ``tail`` call per host for all its running runs."""
        if now - self._last_tails < self.options.tail_interval:
            return
        self._last_tails = now
        by_host: dict[str, dict[str, int]] = {}
        for t in self.state.active.values():  # one pass, not one per host
            if t.host and t.run_id and t.state is S.RUNNING:
                by_host.setdefault(t.host, {})[t.run_id] = t.id
        for name, hs in self.state.hosts.items():
            runs = by_host.get(name)
            if runs and hs.session.up and not hs.tailing:
                hs.tailing = True
                self.jobs.spawn(self._tail_one(hs, runs))
        # Written every interval, changed or not: its time stamp tells `status` we are alive.
        state = self.state
        state.last_lines = {k: v for k, v in state.last_lines.items() if k in state.active}
        self.write_status()

    async def _tail_one(self, hs: HostState, runs: dict[str, int]) -> None:
        try:
            reply = await hs.session.call("tail", runs=sorted(runs), bytes=4096, timeout=10.0)
        except (ConnectionLostError, TransportError, ProtocolViolationError):
            return
        finally:
            hs.tailing = False
        for run_id, line in (reply.get("lines") or {}).items():
            task_id = runs.get(run_id)
            if task_id in self.state.active and isinstance(line, str):
                self.state.last_lines[task_id] = line
        # The last reply of the round writes the file: one write per round, not one per host
        # (with 64 hosts, 32 rewrites of the whole file a second).
        if not any(h.tailing for h in self.state.hosts.values()):
            self.write_status()

    def write_status(self) -> None:
        """Rewrite the status file: last output lines and each host's GPU view."""
        try:
            sessions = (h.session for h in self.state.hosts.values())
            views = gpu_views(sessions, self.state.active.values(), time.monotonic())
            write_last_lines(self.store.path, self.state.last_lines, hosts=views)
        except OSError as err:
            self.reporter.log(f"could not record last output lines: {err}", style="yellow")

    # -- host (re)connection: reconcile before placing anything there ----------------------------

    def on_host_change(self, session: HostSession) -> None:
        """The sessions' callback for a host that came up or went down."""
        hs = self.state.hosts.get(session.name)
        if hs is None:
            return
        if session.status == "up":
            self.reporter.log(f"{session.name}: connected", style="green")
            hs.reconciled = False
            for task in self.state.active.values():  # kills sent before may never have arrived
                if task.host == session.name and task.run_id:
                    self._kills_sent.pop(task.run_id, None)
            self.jobs.spawn(self._reconcile(hs))
        elif session.status == "down":
            hs.reconciled = False
            self.reporter.log(f"{session.error}", style="yellow")
            # Re-plan at once: pending tasks' reasons must say why the host failed, not the
            # "connecting" of the plan made before it did (dispatch may end on this tick).
            self.state.tick_now = True
            self.write_status()  # `status` names the host and why now
        self.state.wake.set()

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
                found = [r for r in (reply.get("runs") or {}).values() if isinstance(r, dict)]
                for report in found:
                    self.reports.receive(name, report)
                plural = "" if len(found) == 1 else "s"
                self.reporter.log(f"{name}: {len(found)} run{plural} re-adopted")
            if hs.session.spec.gpus != ():
                await hs.session.refresh_gpus()
        except (ConnectionLostError, TransportError, ProtocolViolationError):
            return  # the session reconnects and we come back here
        hs.reconciled = True
        self.state.wake.set()
        if hs.session.spec.sync and hs.session.fence:
            self.jobs.spawn(self._collect(hs.session, hs.session.fence))

    async def _collect(self, session: HostSession, key: str) -> None:
        """Clean the host's snapshot store once connected (``ship.collect``)."""
        needed = self.store.snapshots(unfinished=True)
        try:
            got = await collect(session.call, key, needed, self.keep)
        except DispatcherError as err:
            self.reporter.log(f"{session.name}: clean-up failed: {err}", style="yellow")
            return
        if any(got.values()):
            self.reporter.log(f"{session.name}: {describe_collected(got)}")
