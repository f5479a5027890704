"""The dispatch loop: reconcile -> collect -> plan -> launch, until the queue drains.

One ``Dispatcher`` serves one queue (a lock file refuses a second). Each tick opens the queue in
one short transaction, applies what hosts reported (launch replies, exits, probes), notices queue
edits made from other terminals (cancels, new tasks, priorities), plans placements with the pure
scheduler, records them as ``launching`` and only then sends the launches. A launch whose reply is
lost stays ``launching``; the next probe of its host finds the run or re-sends the same run id,
which the helper creates atomically: a task is never started twice.

``Dispatcher`` owns its parts and calls them: ``Placement`` (placement.py), ``Reports``
(reports.py: applying run reports), ``HostCalls`` (hostcalls.py: every call to a host) and
``Jobs`` (jobs.py). What they share is one ``LoopState`` (state.py), passed to each. The loop
itself owns the queue file's attachment, the change token and the tick's timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter
from pathlib import Path

from dispatcher.config.hosts import HostsConfig
from dispatcher.config.paths import dispatch_lock
from dispatcher.core.models import ACTIVE_STATES, Task, TaskState
from dispatcher.dispatch.hostcalls import HostCalls
from dispatcher.dispatch.jobs import Jobs
from dispatcher.dispatch.logs import LogCollector
from dispatcher.dispatch.placement import Placement
from dispatcher.dispatch.recovery import SuspensionSync, crash_point
from dispatcher.dispatch.reports import Reports
from dispatcher.dispatch.state import DispatchOptions, HostState, LoopState, Reporter, Snapshot
from dispatcher.remote.session import HostSession, fence_key, ssh_options
from dispatcher.store.queue import Store, Tally, Txn

__all__ = ["DispatchOptions", "Dispatcher", "Reporter", "Snapshot"]

S = TaskState
#: A tick that applied at least this many reports counts as busy (pending reasons wait).
BUSY_REPORTS = 8
#: After a round with reports, keep the queue file attached for the next one, for at most this
#: long at a stretch (``Txn.linger``):
#: it saves ATTACH, schema check and DETACH (a checkpoint). A process that wants the file says so
#: (``Store.wanted``) and gets it within a poll interval; others wait at most about this long.
LINGER = 2.0
#: The progress display gets a new snapshot at most this often.
SHOW_EVERY = 0.25
#: Release a lingering queue file after this long without a tick.
RELEASE_IDLE = 0.3
#: After letting a waiting process in, leave the file to it for at most this long.
YIELD_MAX = 0.5


def _plus(
    base: dict[TaskState, int], delta: dict[TaskState, int], seen: dict[TaskState, int]
) -> dict[TaskState, int]:
    """``base`` counts plus the moves in ``delta`` not already in them (``seen``)."""
    return {s: base.get(s, 0) + delta.get(s, 0) - seen.get(s, 0) for s in TaskState}


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
        self.state = LoopState()
        self.jobs = Jobs(reporter, self.state.wake)
        self.placement = Placement(self.state, reporter)
        collector = LogCollector(logs_dir)
        self.reports = Reports(self.state, store, config, reporter, collector, self.jobs)
        self.calls = HostCalls(
            self.state, store, self.options, reporter, self.jobs, self.reports,
            self._attach_queue, keep=config.sync.keep,
        )  # fmt: skip
        self.suspensions = SuspensionSync()
        self._token: tuple[int, ...] | None = None
        # ``Txn.attachment`` of the last tick; none yet, and no attachment is numbered -1.
        self._attachment = (-1, 0)
        self._last_tick = 0.0
        self._lingering = False
        self._synced_at = -1e9
        self._shown_at = -1e9
        self._tally: Tally | None = None  # the last one read

    # -- the shared state, as the CLI reads it ---------------------------------------------------

    @property
    def hosts(self) -> dict[str, HostState]:
        return self.state.hosts

    @property
    def active(self) -> dict[int, Task]:
        return self.state.active

    @property
    def counts(self) -> dict[TaskState, int]:
        return self.state.counts

    @property
    def final(self) -> dict[int, TaskState]:
        return self.state.final

    @property
    def unplaceable(self) -> dict[int, str]:
        return self.state.unplaceable

    @property
    def command_faults(self) -> dict[str, list[int]]:
        return self.state.command_faults

    # -- public ----------------------------------------------------------------------------------

    async def run(self) -> int:
        """Dispatch until done (or forever); returns the process exit code (0 ok, 1 failures)."""
        with dispatch_lock(self.store.path):
            return await self._run_locked()

    def request_stop(self) -> None:
        """Stop launching and return soon; running tasks keep running on their hosts."""
        self.state.stop = True
        self.state.wake.set()

    # -- main loop -------------------------------------------------------------------------------

    async def _run_locked(self) -> int:
        queue_id = self.store.queue_id()
        for order, spec in enumerate(self.config.hosts):
            if not spec.enabled:
                continue
            opts = ssh_options(spec, accept_new_host_keys=self.options.accept_new_host_keys)
            fence = fence_key(queue_id, spec.name)
            on_exit, on_change = self.reports.on_exit_event, self.calls.on_host_change
            session = HostSession(spec, opts, on_exit, on_change, fence)
            self.hosts[spec.name] = HostState(session, order)
        runners = [asyncio.ensure_future(h.session.run()) for h in self.hosts.values()]
        try:
            await self._loop()
            self.reporter.update(self.snapshot())  # the last state, whenever the last one was
            self.calls.write_status()  # its GPU views are what `queue add` checks needs against
        finally:
            self.store.release()
            self.jobs.cancel()
            await asyncio.gather(*(h.session.stop() for h in self.hosts.values()))
            for r in runners:
                r.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
        bad = [t for t, s in self.final.items() if s in (S.FAILED, S.LOST)]
        return 1 if bad or self.unplaceable else 0

    async def _loop(self) -> None:
        while True:
            await self._wait_for_work()
            # Long enough for one tick to carry the reports of a burst; a longer wait under
            # load slows every slot's cycle (20 ms cost a fifth of the throughput).
            if self.options.coalesce:
                await asyncio.sleep(self.options.coalesce)
            self.state.wake.clear()
            if self.state.stop:
                return
            await self._round()
            self.calls.poll_tails(time.monotonic())
            self.calls.poll_jobs(time.monotonic())
            self.calls.refresh_gpus(time.monotonic())  # also between ticks, while tasks run
            self.calls.send_cancels()
            if self._done():
                # One last plan on the hosts' final state (a host may have come up unusable or
                # gone down since the last one, without a report to wake a tick): its reasons
                # are what `queue ls` shows after dispatch ends.
                self.state.tick_now = True
                await self._round()
                if self._done():
                    return

    async def _round(self) -> None:
        """A tick, if one is due, once the queue file is ours (``_attach_queue``)."""
        if self._tick_due():
            await self._attach_queue()
            self._tick()

    async def _attach_queue(self) -> None:
        """Wait for the queue file without blocking the event loop: while another process holds
        it, keepalives, host reports and the status file go on. StoreLockedError after the
        store's lock timeout, as any command gets."""
        deadline = time.monotonic() + self.store.lock_timeout
        delay = 0.002
        while not self.store.try_attach():
            if time.monotonic() >= deadline:
                raise self.store.locked_error()
            self.calls.poll_tails(time.monotonic())  # `status` must still see us alive
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _wait_for_work(self) -> None:
        """Return when woken, when another process wrote the queue (``queue add``, cancel: they
        cannot wake us, so poll the file's change token, a stat), or after ``idle_tick``."""
        start = time.monotonic()
        deadline = start + self.options.idle_tick
        if not self._lingering:
            self.store.release()
        elif self.store.wanted():
            await self._let_in()
        while not self.state.wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.state.wake.wait(), min(left, self.options.queue_poll))
            if self._lingering and self.store.wanted():
                await self._let_in()
            elif time.monotonic() - start >= RELEASE_IDLE:
                self._lingering = False  # quiet now: let other processes in
                self.store.release()
            if self.store.change_token() != self._token:
                return

    async def _let_in(self) -> None:
        """Release the lingering queue file to a process waiting for it, and give it a moment."""
        self._lingering = False
        self.store.release()
        until = time.monotonic() + YIELD_MAX
        while self.store.wanted() and time.monotonic() < until:
            await asyncio.sleep(0.01)

    def _done(self) -> bool:
        if self.options.forever or self.jobs or self.active or self.reports.queued:
            return False
        if any(h.session.status == "connecting" for h in self.hosts.values()):
            return False
        if any(h.session.status == "up" and not h.reconciled for h in self.hosts.values()):
            return False
        # Pending work that the last plan could not place, with nothing running that could free
        # capacity: report it (``unplaceable``) and stop rather than wait forever.
        return not (self.counts[S.PENDING] and self.placement.placed_last)

    # -- the tick: one transaction ----------------------------------------------------------------

    def _tick_due(self) -> bool:
        """Whether a tick has work: reports, a queue written by others, pending tasks that fit.

        Besides events, a tick is due when forced (``tick_now``) or, every idle_tick,
        while time alone can change things: a host down (lost_after) or suspended. A quiet
        queue with every host up costs no transaction (idle CPU with 64 tasks running).
        """
        now = time.monotonic()
        due = self.state.tick_now or (
            now - self._last_tick >= self.options.idle_tick
            and any(not h.session.up or h.suspended for h in self.hosts.values())
        )
        token = self.store.change_token()
        return bool(self.reports.queued or token != self._token or due or self._needs_plan())

    def _tick(self) -> None:
        """One round in one transaction (``_round`` decides it is due and attaches first)."""
        now = time.monotonic()
        token = self.store.change_token()
        self._last_tick = now
        self.state.tick_now = False
        self.state.queue_changed = token != self._token
        launches: list[Task] = []
        with self.store.transaction() as tx:
            if self._tally is None:  # first tick: a queue written by schema 3 may hold tasks
                tx.settle(everything=True)  # waiting for what can no longer happen
            # The same attachment, next transaction: nobody else wrote since our last tick.
            continuous = tx.attachment == (self._attachment[0], self._attachment[1] + 1)
            reports = self.reports.take()
            self.state.busy = len(reports) >= BUSY_REPORTS
            # Any round with reports is likely followed by another within milliseconds (the
            # launches it sends reply at once): keep the file for it. Idle polls release it.
            tx.linger = LINGER if reports else 0.0
            self._lingering = bool(reports)
            # Our own rows: their moves are checked now and written together, in one UPDATE
            # and one INSERT, before the next read of this round or at commit.
            tx.defer_moves(self.active)
            for host, report in reports:
                self.reports.apply(tx, host, report)
            self.reports.expire_unreachable(tx, now)
            self._sync_suspensions(tx, now, continuous=continuous)
            # Nobody else wrote since our last round and none of our moves re-entered pending:
            # the counts follow from our own moves, and the pending rows read then still hold.
            # Then placement reads only when its cached pending rows run short, and the round's
            # moves (exits and placements) go out together at commit.
            last = self._tally if continuous and not tx.to_pending else None
            reuse = last is not None
            if last is not None:
                tally, base, seen = last, self.counts, {}  # as the last round left them
            else:
                tally = self._tally = tx.tally()
                base, seen = tally.counts, dict(tx.delta)
                if not continuous:
                    self._merge_active(tx, tally)
            self.state.counts = _plus(base, tx.delta, seen)
            plain = not (tally.pending_after or tally.pending_throttled)
            tx.waiters = bool(tally.pending_after)  # see _settled
            launches = self.placement.place(tx, plain=plain, reuse=reuse)
        self.state.counts = _plus(base, tx.delta, seen)
        self._settled(tx)
        self._attachment = tx.attachment
        self._token = self.store.change_token()
        if launches:
            crash_point("placed")  # test hook: die between `launching` and the launch
        self.calls.stop_runs(self.reports.take_strays())
        self.calls.send_launches([*launches, *self.reports.take_resends()])
        self.calls.send_cleanups(self.reports.take_cleanups())
        self.calls.refresh_gpus(now)
        if now - self._shown_at >= SHOW_EVERY:  # a live view redraws 4 times a second
            self._shown_at = now
            self.reporter.update(self.snapshot())

    def _settled(self, tx: Txn) -> None:
        """Name the tasks the store's dependency rule cancelled in the tick (``Txn.settle``).

        The tick tells the store when no pending task had dependencies (``tx.waiters``): with
        only our own moves since, a task that finishes has nobody waiting for it (a task we
        requeued had its dependencies met already), so the rule looks only at requeued tasks.
        """
        for task_id, reason in tx.settled:
            self.state.final[task_id] = S.CANCELLED
            self.reporter.log(f"task {task_id} cancelled ({reason})", style="yellow")

    def _sync_suspensions(self, tx: Txn, now: float, *, continuous: bool) -> None:
        """Keep host suspensions and the queue file in step (``recovery.SuspensionSync``).

        Resumes made from another terminal show up within a second; a suspended host is looked
        at every tick. Skipping it saves a statement on most busy ticks. While the attachment is
        continuous nobody else wrote: only our own suspensions are news.
        """
        if self.suspensions.unwritten(self.hosts) or (
            not continuous
            and (now - self._synced_at >= 1.0 or any(h.suspended for h in self.hosts.values()))
        ):
            self._synced_at = now
            self.suspensions.sync(tx, self.hosts, self.reporter)

    def _merge_active(self, tx: Txn, tally: Tally) -> None:
        """Bring ``active`` up to date after other transactions may have run.

        Only this dispatcher moves tasks into or out of launching/running (it holds the
        dispatch lock); other processes can only flag them with cancel_requested (``queue
        cancel``). So the flags suffice, unless the counts disagree with the tasks held
        (the first tick): then the active rows are read.
        """
        held = {s: 0 for s in ACTIVE_STATES}
        for t in self.active.values():
            held[t.state] += 1
        if any(held[s] != tally.counts[s] for s in ACTIVE_STATES):
            self.state.active = {t.id: t for t in tx.tasks(states=ACTIVE_STATES)}
            return
        for i in tally.cancel_requested:
            task = self.active.get(i)
            if task is not None and not task.cancel_requested:
                self.active[i] = task.replace(cancel_requested=True)

    def _needs_plan(self) -> bool:
        return bool(self.counts[S.PENDING]) and any(
            self.placement.capacity(name).usable for name in self.hosts
        )

    def snapshot(self) -> Snapshot:
        """Counts and host health for the progress display and the final summary."""
        hosts = []
        running = Counter(t.host for t in self.active.values())  # one pass, not one per host
        for name, hs in self.hosts.items():
            n = running[name]
            desc = hs.suspended or hs.session.describe()
            hosts.append((name, f"{desc}, {n} running" if hs.session.up else desc))
        ok = sum(1 for s in self.final.values() if s is S.SUCCEEDED)
        bad = sum(1 for s in self.final.values() if s in (S.FAILED, S.LOST))
        cancelled = sum(1 for s in self.final.values() if s is S.CANCELLED)
        runtimes = self.state.runtimes
        runtime = statistics.median(runtimes) if runtimes else None
        return Snapshot(dict(self.counts), hosts, ok, bad, cancelled, runtime)
