"""What the dispatch loop's parts share: one small state object, passed to each, not inherited.

``LoopState`` holds what more than one part reads or writes (hosts, active tasks, counts, final
states, pending reasons, last output lines, runtimes, the wake event and the loop's flags);
``HostState`` is the bookkeeping for one host. Each part keeps its own fields to itself. This
module also names the run's knobs (``DispatchOptions``) and where the user is told what happens
(``Reporter``). It holds data only: no I/O, no calls to hosts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from dispatcher.core.deps import Gate
from dispatcher.core.models import Task, TaskState

if TYPE_CHECKING:
    from dispatcher.remote.session import HostSession


@dataclass
class DispatchOptions:
    """Knobs of one ``labtasker dispatch`` run."""

    forever: bool = False
    accept_new_host_keys: bool = False
    idle_tick: float = 2.0  # re-read the queue at least this often (seconds)
    gpu_refresh: float = 5.0  # re-ask nvidia-smi this often while tasks wait for GPUs
    coalesce: float = 0.005  # gather events this long before a tick
    queue_poll: float = 0.05  # look this often for writes by other processes (a stat)
    tail_interval: float = 2.0  # fetch running tasks' last output lines this often


@dataclass
class Snapshot:
    """What the progress display shows."""

    counts: dict[TaskState, int]
    hosts: list[tuple[str, str]]
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    median_runtime: float | None = None  # of tasks that succeeded in this run (for the ETA)


class Log(Protocol):
    """Where a part says what happened, one line at a time."""

    def log(self, message: str, *, style: str = "") -> None: ...


class Reporter(Log, Protocol):
    """Where the dispatcher tells the user what happens (a rich live view, or plain lines)."""

    def update(self, snapshot: Snapshot) -> None: ...


@dataclass
class HostState:
    """The dispatcher's bookkeeping for one host, next to its session."""

    session: HostSession
    order: int
    reconciled: bool = False
    refreshing: bool = False
    tailing: bool = False
    polling: bool = False  # a cluster's probe of its jobs is in flight (HostCalls.poll_jobs)
    polled_jobs: float = 0.0  # monotonic time of the last one
    released: dict[int, float] = field(default_factory=dict)  # gpu index -> monotonic time
    failures: deque[tuple[float, str, int]] = field(default_factory=deque)  # (time, why, task)
    suspended: str | None = None
    orphans: set[str] = field(default_factory=set)  # run ids fenced off after a loss


def _counts() -> dict[TaskState, int]:
    return {s: 0 for s in TaskState}


@dataclass
class LoopState:
    """What the loop and its parts share; each field says who writes it."""

    hosts: dict[str, HostState] = field(default_factory=dict)  # the loop, at start
    # Launching and running tasks of this queue: placement adds, report handling removes, the
    # loop reads them again after another process wrote the queue.
    active: dict[int, Task] = field(default_factory=dict)
    counts: dict[TaskState, int] = field(default_factory=_counts)  # the loop, each tick
    final: dict[int, TaskState] = field(default_factory=dict)  # tasks that ended in this run
    unplaceable: dict[int, str] = field(default_factory=dict)  # placement: why work waits
    # Report handling: failures seen the same way on every host (the command's fault, not the
    # hosts'): why -> the ids of the tasks that failed so.
    command_faults: dict[str, list[int]] = field(default_factory=dict)
    last_lines: dict[int, str] = field(default_factory=dict)  # host calls: running tasks' tails
    # Placement: what a task submitted ahead to a cluster waits for there (core.deps.gates);
    # its launch reads it. Report handling: the runs a withdrawn task waited for (it is not
    # submitted ahead on the same runs again).
    gates: dict[int, list[Gate]] = field(default_factory=dict)
    held_back: dict[int, frozenset[str]] = field(default_factory=dict)
    runtimes: list[float] = field(default_factory=list)  # seconds, of tasks that succeeded
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # anyone: a tick may be due
    tick_now: bool = True  # anyone: the next round ticks, even with nothing new
    stop: bool = False  # the loop: stop launching (request_stop)
    busy: bool = False  # the loop: this tick applied many reports (pending reasons wait)
    queue_changed: bool = True  # the loop: another process wrote the queue since last tick
