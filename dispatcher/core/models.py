"""Task lifecycle and the plain data records shared by every layer. No I/O, no clock.

The table ``TRANSITIONS`` is the lifecycle; ``check_transition`` enforces it and is called by the
store's single state-changing function, so no other code path can move a task illegally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from dispatcher.errors import IllegalTransitionError


class TaskState(StrEnum):
    """Where a task is in its life. ``launching`` means: placed, launch sent, start unconfirmed."""

    PENDING = "pending"
    LAUNCHING = "launching"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


S = TaskState

#: Allowed moves. ``lost`` is not terminal: the dispatcher requeues lost tasks (or fails them after
#: too many losses); ``failed``/``cancelled`` go back to pending only through retry.
TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    # A pending task whose template is refused at dispatch fails without being launched.
    S.PENDING: frozenset({S.LAUNCHING, S.CANCELLED, S.FAILED}),
    # A launch that provably never created its run goes back to pending; a run the host reports
    # ended before we saw it start goes straight to its outcome.
    S.LAUNCHING: frozenset({S.RUNNING, S.PENDING, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST}),
    # A SLURM job submitted ahead of its dependency's outcome, which that outcome then held
    # back (it never started its task), goes back to pending: withdrawn, no attempt counted.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST, S.PENDING}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING}),
    S.LOST: frozenset({S.PENDING, S.FAILED}),
}

#: States in which a task holds capacity on a host.
ACTIVE_STATES: frozenset[TaskState] = frozenset({S.LAUNCHING, S.RUNNING})
#: States a task stays in unless a user acts (retry).
TERMINAL_STATES: frozenset[TaskState] = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
#: States whose rendered command counts as "already there" for duplicate detection.
DUPLICATE_STATES: frozenset[TaskState] = frozenset({S.PENDING, S.LAUNCHING, S.RUNNING, S.SUCCEEDED})
#: How many times a task may be lost (host crash, partition past grace) before it is failed.
MAX_LOSSES = 3


def check_transition(task_id: int, old: TaskState, new: TaskState) -> None:
    """Raise ``IllegalTransitionError`` unless ``old -> new`` is in ``TRANSITIONS``."""
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "none (final state)"
        raise IllegalTransitionError(
            f"task {task_id}: cannot move from {old} to {new} (allowed from {old}: {allowed})"
        )


def parse_state(text: str) -> TaskState:
    """Turn user text into a state, or raise a UsageError listing the valid ones."""
    from dispatcher.errors import UsageError

    try:
        return TaskState(text.strip().lower())
    except ValueError:
        valid = ", ".join(s.value for s in TaskState)
        raise UsageError(f"unknown state {text!r}; valid states: {valid}") from None


@dataclass(frozen=True)
class NewTask:
    """A task about to be added: args already validated, command already rendered."""

    args: dict[str, Any]
    template: str
    command: str
    name: str | None = None
    priority: int = 0
    max_attempts: int = 1
    timeout: float | None = None
    gpus: int | None = None
    after: tuple[int, ...] = ()
    max_running: int | None = None
    outputs: tuple[str, ...] = ()
    after_any: tuple[int, ...] = ()
    after_failed: tuple[int, ...] = ()
    gpu_memory: int | None = None
    gpu_type: str | None = None
    min_gpu_memory: int | None = None


def sweep_key(name: str | None, batch: int | None) -> str:
    """The throttle group of a task: its name, else the ``queue add`` it came from.

    ``max_running`` limits how many tasks of one group run at once; tasks added under one name
    (a sweep submitted again with more points, say) share one group. The store's SQL mirrors
    this rule in ``store.txn.Txn.pending_candidates``.
    """
    return name if name is not None else f"batch {batch}"


@dataclass
class Task:
    """One row of the queue. ``gpus`` is what the task asked for; ``gpu_ids`` what it got."""

    id: int
    state: TaskState
    args: dict[str, Any]
    template: str
    command: str
    name: str | None = None
    priority: int = 0
    max_attempts: int = 1
    attempt: int = 0
    losses: int = 0
    timeout: float | None = None
    gpus: int | None = None
    host: str | None = None
    gpu_ids: list[int] | None = None
    run_id: str | None = None
    exit_code: int | None = None
    result: dict[str, Any] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None
    cancel_requested: bool = False
    after: list[int] = field(default_factory=list)
    batch: int | None = None  # the first id of the ``queue add`` that created the task
    max_running: int | None = None  # at most this many of the task's sweep run at once
    outputs: tuple[str, ...] = ()  # globs under the working directory, copied back after exit
    # Dependencies (core.deps): start after these succeeded / ended / failed.
    after_any: list[int] = field(default_factory=list)
    after_failed: list[int] = field(default_factory=list)
    cancelled_by: int | None = None  # the dependency whose outcome cancelled this task
    snapshot: str | None = None  # the project snapshot recorded at `queue add` (its sha256)
    git_commit: str | None = None  # the project's git HEAD then, if it was a git work tree
    git_dirty: bool | None = None  # whether that work tree had changes not committed
    gpu_memory: int | None = None  # bytes needed on each GPU; set: the GPU may be shared
    gpu_type: str | None = None  # "A100|H100": substrings of the GPU's name, any one
    min_gpu_memory: int | None = None  # bytes of total memory each of its GPUs must have
    job_id: str | None = None  # its SLURM job ("1234_5") while on a cluster host

    @property
    def sweep(self) -> str:
        """The throttle group ``max_running`` counts in; see ``sweep_key``."""
        return sweep_key(self.name, self.batch)

    def to_json(self) -> dict[str, Any]:
        """The public JSON shape used by ``queue ls --json`` and ``status --json``."""

        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat().replace("+00:00", "Z")

        return {
            "id": self.id,
            "name": self.name,
            "state": str(self.state),
            "args": self.args,
            "template": self.template,
            "command": self.command,
            "priority": self.priority,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "gpus_requested": self.gpus,
            "host": self.host,
            "gpus": self.gpu_ids,
            "run_id": self.run_id,
            "exit_code": self.exit_code,
            "result": self.result,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "reason": self.reason,
            "cancel_requested": self.cancel_requested,
            "batch": self.batch,
            "max_running": self.max_running,
            "outputs": list(self.outputs),
            "after": list(self.after),
            "after_any": list(self.after_any),
            "after_failed": list(self.after_failed),
            "snapshot": self.snapshot,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "gpu_memory": self.gpu_memory,
            "gpu_type": self.gpu_type,
            "min_gpu_memory": self.min_gpu_memory,
            "job_id": self.job_id,
        }

    def replace(self, **changes: Any) -> Task:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
