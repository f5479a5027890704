"""The soak's driver: seeded short tasks over real sshd hosts while seeded faults strike.

``Plan.make(seed, size)`` draws everything random (task sleeps, which fault, on which host, when,
how long it holds). ``Soak.run()`` feeds the queue in batches through the real CLI, injects each
fault once the journals show enough tasks done, and ends with one fault-free ``dispatch`` run to
completion; ``Soak.verdict()`` then judges from the hosts' journals (``journal.py``) and returns
the violations and a summary. Fault hold times are part of the seeded schedule, never a check.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.store.queue import Store
from tests.chaos import journal
from tests.chaos.plan import KINDS, Fault, Plan
from tests.chaos.report import Verdict
from tests.integration.conftest import finish
from tests.integration.faults_lab import FaultLab, connected, kill9
from tests.sshd import SshdHost, poll, proc_table

#: Seconds without one more task done before the soak gives up (a hung dispatcher).
STALL = 120.0
#: Processes of labtasker or of a task still alive this long after the last dispatch are leftovers.
LEFTOVER_GRACE = 15.0


def crash(host: SshdHost) -> list[int]:
    """Kill every process of the host's user (see ``SshdHost.kill_user_processes``)."""
    return host.kill_user_processes()


@dataclass
class Soak:
    """One soak over the ``faults`` lab; see the module docstring."""

    faults: FaultLab
    plan: Plan
    logs: Path
    journal_dir: Path = field(init=False)
    hosts_file: Path = field(init=False)
    progress: journal.Progress = field(init=False)
    controller: subprocess.Popen[str] | None = None
    controllers: int = 0
    ids: list[int] = field(default_factory=list)
    crashes: list[journal.Crash] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    stalled_with_launch: int = 0
    problems: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)  # the faults, with their times
    leftovers: list[str] = field(default_factory=list)
    last_exit: int | None = None
    began: float = 0.0
    ended: float = 0.0

    def __post_init__(self) -> None:
        lab = self.faults.lab
        self.journal_dir = lab.shared / "journals"
        self.journal_dir.mkdir(mode=0o777)
        self.journal_dir.chmod(0o777)  # each host's user writes its own journal here
        script = lab.shared / "soak_task.sh"
        script.write_text(journal.TASK_SCRIPT)
        script.chmod(0o755)
        self.script = script
        self.progress = journal.Progress(self.journal_dir)
        self.hosts_file = self.faults.hosts_toml(
            *self.plan.slots,
            per_host={h: {"slots": k} for h, k in self.plan.slots.items()},
            gpus=0,
            lost_after=60,  # far above every hold: only crashes may lose a run
        )

    # -- the parts -----------------------------------------------------------------------------

    def host(self, alias: str) -> SshdHost:
        return self.faults.lab.hosts[alias]

    def fail(self, what: str) -> AssertionError:
        return AssertionError(f"soak seed {self.plan.seed}: {what}")

    def start_controller(self, *, forever: bool = True) -> subprocess.Popen[str]:
        """A new ``labtasker dispatch``, its output in its own log file."""
        lab = self.faults.lab
        self.controllers += 1
        args = ["dispatch", "--hosts", str(self.hosts_file)] + (["--forever"] if forever else [])
        with (self.logs / f"dispatch-{self.controllers}.log").open("w") as log:
            proc = subprocess.Popen(
                lab.argv(*args), cwd=lab.root, env=lab.env(), stdout=log,
                stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        lab.started.append(proc)
        self.controller = proc
        return proc

    def log_tail(self) -> str:
        text = (self.logs / f"dispatch-{self.controllers}.log").read_text(errors="replace")
        return text[-1500:]

    def watch_controller(self) -> None:
        """A ``--forever`` dispatcher that exits by itself is a finding; start another."""
        assert self.controller is not None
        code = self.controller.poll()
        if code is not None:
            self.problems.append(
                f"dispatch exited by itself with {code} ({self.progress.count()} tasks done);"
                f" its log ends: {self.log_tail()!r}"
            )
            self.start_controller()

    def feed(self, *, force: bool = False, everything: bool = False) -> None:
        """Add the next batch through ``queue add`` once few tasks are left to run."""
        total = len(self.plan.sleeps)
        outstanding = len(self.ids) - self.progress.count()
        capacity = sum(self.plan.slots.values())
        if len(self.ids) >= total or not (force or everything or outstanding < capacity):
            return
        count = total - len(self.ids) if everything else min(2 * capacity, total - len(self.ids))
        batch = self.faults.lab.root / f"batch-{len(self.ids)}.jsonl"
        first = len(self.ids)
        batch.write_text(
            "".join(
                json.dumps({"i": i, "sleep": self.plan.sleeps[i]}) + "\n"
                for i in range(first, first + count)
            )
        )
        cmd = f"sh {self.script} {self.journal_dir} %{{sleep}} %{{i}}"
        out = self.faults.lab.ok("queue", "add", "--json", "--cmd", cmd, "--file", str(batch))
        got = json.loads(out)
        self.ids += list(got["ids"] if isinstance(got, dict) else got)

    def advance(self, done: int, ready: Callable[[], bool] = lambda: True) -> None:
        """Feed the queue until ``done`` tasks have a DONE line and ``ready()`` is true, or
        every task is done; fail when no task finishes for ``STALL`` s."""
        last = [self.progress.count(), time.monotonic()]

        def reached() -> bool:
            self.watch_controller()
            self.feed()
            now = self.progress.count()
            if now > last[0]:
                last[:] = [now, time.monotonic()]
            elif time.monotonic() - last[1] > STALL:
                raise self.fail(
                    f"no task finished for {STALL:g} s ({now} done, {len(self.ids)} added, want"
                    f" {done}); the dispatch log ends: {self.log_tail()!r}"
                )
            if now == len(self.plan.sleeps):
                return True
            return now >= done and ready()

        poll(reached, f"soak seed {self.plan.seed}: {done} tasks done", timeout=1e9)

    def target_ready(self, fault: Fault) -> bool:
        """Whether the fault has something to hit: a host fault waits until the host runs a
        task, and until the session or helper it strikes is there."""
        if fault.kind.startswith("controller") or fault.kind == "stalled_session":
            return True  # the stalled session waits on its own terms (``stall``)
        host = self.host(fault.host)
        if not self.progress.running[fault.host]:
            return False
        if fault.kind == "helper_stop":
            return bool(self.helpers(host))
        return fault.kind == "host_crash" or bool(host.connection_pids())

    def helpers(self, host: SshdHost) -> list[int]:
        """The host's helper processes: ``python3`` of its user started by an sshd session
        (a keeper is forked by a helper, in a session of its own)."""
        table = proc_table()
        return [
            p.pid
            for p in host.processes()
            if p.uid == host.uid
            and p.cmdline.startswith("python3")
            and table.get(p.ppid, p).cmdline.startswith("sshd:")
        ]

    def launching_on(self, alias: str) -> list[int]:
        return [
            t["id"]
            for t in self.faults.lab.tasks()
            if t["state"] == "launching" and t["host"] == alias
        ]

    # -- the faults ----------------------------------------------------------------------------

    def strike(self, fault: Fault) -> None:
        """Inject one fault, undo it after its hold, and note it in the timeline."""
        began = time.time()
        detail = self.inject(fault, self.host(fault.host))
        self.injected[fault.kind] += 1
        where = "" if fault.kind.startswith("controller") else f" {fault.host}"
        self.timeline.append(f"{began:.3f}-{time.time():.3f} {fault.kind}{where}: {detail}")

    def inject(self, fault: Fault, host: SshdHost) -> str:
        """The fault itself; a few words on what it hit."""
        assert self.controller is not None
        old = self.controller.pid
        if fault.kind == "controller_kill":
            kill9(self.controller)
            return f"dispatch pid {old} killed, pid {self.start_controller().pid} started"
        if fault.kind == "controller_stop":
            self.controller.send_signal(signal.SIGSTOP)
            time.sleep(fault.hold)
            self.controller.send_signal(signal.SIGCONT)
            return f"dispatch pid {old} stopped for {fault.hold} s"
        if fault.kind == "drop_connections":
            return f"sshd session pids {host.kill_connections()} killed"
        if fault.kind == "sshd_outage":
            host.stop_listener()
            pids = host.kill_connections()
            time.sleep(fault.hold)
            host.start_listener()
            return f"listener down for {fault.hold} s, session pids {pids} killed"
        if fault.kind == "stalled_session":
            return self.stall(fault, host)
        if fault.kind == "host_crash":
            host.stop_listener()
            at = time.time()
            pids = crash(host)
            killed = time.time()
            self.progress.running[fault.host].clear()  # their DONE lines will never come
            time.sleep(fault.hold)
            host.start_listener()
            self.crashes.append(journal.Crash(fault.host, at, killed, time.time()))
            return f"{len(pids)} processes killed at {at:.3f}, down for {fault.hold} s"
        if fault.kind == "helper_stop":
            pids = self.helpers(host)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(fault.hold)
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            return f"helper pids {pids} stopped for {fault.hold} s"
        raise ValueError(fault.kind)

    def stall(self, fault: Fault, host: SshdHost) -> str:
        """Freeze the host's session while launches to it are in flight, kill -9 the dispatcher,
        let a new one launch and finish them, then thaw: the old session delivers late."""
        capacity = sum(self.plan.slots.values())
        spare = capacity - self.plan.slots[fault.host]
        # Let the queue run low so the host has free slots for the batch added while frozen.

        def low() -> bool:
            self.watch_controller()
            return len(self.ids) - self.progress.count() <= spare

        poll(
            low,
            f"soak seed {self.plan.seed}: the queue running low",
            timeout=STALL,
        )
        host.freeze()
        self.feed(force=True)
        found: list[int] = []
        deadline = time.monotonic() + 5.0
        while not found and time.monotonic() < deadline:  # a bounded look, not a check
            found = self.launching_on(fault.host)
        self.stalled_with_launch += bool(found)
        assert self.controller is not None
        kill9(self.controller)
        proc = self.start_controller()
        poll(
            lambda: connected(proc, host), f"seed {self.plan.seed}: reconnected to {fault.host}", 60
        )
        if found:
            poll(
                lambda: (self.progress.count(), set(found) <= self.progress.done)[1],
                f"soak seed {self.plan.seed}: tasks {found} done after the restart",
                STALL,
            )
        time.sleep(fault.hold)
        host.thaw()
        return f"tasks {found} launching when frozen, dispatch pid {proc.pid} took over"

    # -- the whole soak ------------------------------------------------------------------------

    def run(self) -> None:
        """Feed, strike every fault in turn, then one last fault-free dispatch to completion.
        An error on the way names the seed and the faults struck so far."""
        try:
            self.drive()
        except Exception as e:
            so_far = "".join(f"\n  {x}" for x in self.timeline)
            raise self.fail(f"{type(e).__name__}: {e}\nfaults so far:{so_far}") from e

    def drive(self) -> None:
        self.began = time.monotonic()
        self.feed(force=True)
        self.start_controller()
        for fault in self.plan.faults:
            self.advance(fault.at_done, functools.partial(self.target_ready, fault))
            self.strike(fault)
        self.feed(everything=True)
        assert self.controller is not None
        self.controller.send_signal(signal.SIGINT)
        finish(self.controller, STALL)
        last = self.start_controller(forever=False)
        try:
            self.last_exit = last.wait(timeout=STALL + len(self.plan.sleeps) / 2)
        except subprocess.TimeoutExpired:
            last.kill()
            last.wait()
            raise self.fail(
                f"the last dispatch did not drain the queue: {self.log_tail()!r}"
            ) from None
        self.ended = time.monotonic()
        self.leftovers = self.wait_for_leftovers()

    def wait_for_leftovers(self) -> list[str]:
        """Processes other than sshd still alive on a soak host ``LEFTOVER_GRACE`` s after the
        last dispatch exited (empty when all are gone in time)."""

        def left() -> list[str]:
            return [
                f"{alias}: pid {p.pid} {p.cmdline[:120]!r}"
                for alias in self.plan.slots
                for p in self.host(alias).processes()
                if not p.cmdline.startswith("sshd")
            ]

        end = time.monotonic() + LEFTOVER_GRACE
        while (found := left()) and time.monotonic() < end:
            time.sleep(0.2)  # polling the process table, bounded by the grace
        return found

    def clean_up(self) -> None:
        """Wake and kill what a failed soak left: stopped dispatchers, frozen sessions, tasks."""
        for proc in self.faults.lab.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        for alias in self.plan.slots:
            host = self.host(alias)
            host.heal()
            for p in host.processes():
                if p.uid == host.uid and not p.cmdline.startswith("sshd"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGKILL)

    # -- the verdict ---------------------------------------------------------------------------

    def queue(self) -> tuple[dict[int, journal.QueueTask], list[journal.QueueAttempt]]:
        store = Store(self.faults.lab.db, lock_timeout=30)
        tasks = {
            t.id: journal.QueueTask(t.id, str(t.state), t.run_id, t.host) for t in store.tasks()
        }
        attempts = []
        with store.transaction() as tx:
            for task_id in tasks:
                for a in tx.attempts(task_id):
                    declared = a.finished_at.timestamp() if a.finished_at else None
                    attempts.append(
                        journal.QueueAttempt(a.task_id, a.run_id, a.host, str(a.outcome), declared)
                    )
        return tasks, attempts

    def verdict(self) -> Verdict:
        journals = journal.read(self.journal_dir)
        tasks, attempts = self.queue()
        violations = list(self.problems)
        violations += journal.check_journals(journals, self.crashes)
        violations += journal.check_slots(journals, self.crashes, self.plan.slots)
        violations += journal.check_queue(journals, self.crashes, tasks, attempts, self.ids)
        violations += [
            f"left behind {LEFTOVER_GRACE:g} s after dispatch: {x}" for x in self.leftovers
        ]
        delays = journal.lost_delays(attempts, self.crashes)
        lost = [a for a in attempts if a.outcome == "lost"]
        cut = [r for r in journals.runs.values() if r.done is None]
        summary: dict[str, Any] = {
            "seed": self.plan.seed,
            "tasks": len(self.ids),
            "slots": self.plan.slots,
            "seconds": self.ended - self.began,
            "controllers": self.controllers,
            "faults": {k: self.injected[k] for k in KINDS},
            "stalled_with_launch": self.stalled_with_launch,
            "runs": len(journals.runs),
            "lost": len(lost),
            "cut_short": len(cut),
            "duplicates": sum("executed twice" in v for v in violations),
            "leftovers": self.leftovers,
            "lost_delay_s": {
                "count": len(delays),
                "median": statistics.median(delays) if delays else None,
                "max": max(delays) if delays else None,
            },
            "last_exit": self.last_exit,
            "violations": len(violations),
            "timeline": self.timeline,
        }
        return Verdict(violations, summary)
