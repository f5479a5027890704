"""Dependencies between tasks: the one rule that says whether a pending task may start, must
wait, or can never start. Pure: the store feeds in the states of the tasks waited for.

Three kinds, as SLURM's afterok, afterany and afternotok:

- ``after``: start once the task succeeded;
- ``after_any``: start once the task ended, whatever its outcome (succeeded, failed, cancelled);
- ``after_failed``: start once the task failed or was cancelled.

Only a final outcome counts: a task that fails with attempts left goes back to pending and is
still waited for. A condition that can no longer hold (``after`` a task that failed or was
cancelled, ``after_failed`` a task that succeeded) makes the waiting task ``cancelled``, with a
reason naming the task ("dependency 5 failed"); retrying that task brings it back. The store
applies this rule in every transaction that finishes a task (``store.depends``); its SQL
twin, ``Txn.pending_candidates``, picks the tasks that may start (tests/unit/
test_candidates_rule.py holds the two equal).

On a SLURM cluster a waiting task may be submitted ahead (``gates``): when every dependency not
yet met is running on that one cluster, SLURM holds the dependent back (afterok, afterany,
afternotok on the dependency's job) and labtasker's wrapper on the compute node applies this
rule again from the dependency's exit record before it starts anything (``Gate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from dispatcher.core.models import Task, TaskState
from dispatcher.core.outcome import real_attempts

S = TaskState


class DepKind(StrEnum):
    """The kind of a dependency; the value is its JSON field, sweep-file and API key."""

    AFTER = "after"
    AFTER_ANY = "after_any"
    AFTER_FAILED = "after_failed"

    @property
    def option(self) -> str:
        """The ``queue add`` option: ``--after``, ``--after-any``, ``--after-failed``."""
        return "--" + self.value.replace("_", "-")

    @property
    def slurm(self) -> str:
        """SLURM's dependency type of the same meaning for one job."""
        return {"after": "afterok", "after_any": "afterany", "after_failed": "afternotok"}[self]


#: For each kind, the states of the task waited for that let the waiting task start.
READY_STATES: Mapping[DepKind, frozenset[TaskState]] = {
    DepKind.AFTER: frozenset({S.SUCCEEDED}),
    DepKind.AFTER_ANY: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    DepKind.AFTER_FAILED: frozenset({S.FAILED, S.CANCELLED}),
}
#: States a task stays in unless a user acts: a condition not met by then never will be.
FINAL_STATES: frozenset[TaskState] = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})


@dataclass(frozen=True)
class Verdict:
    """What the rule says about one pending task: it may start (``ready``), or it waits for
    ``waiting_for``, or it never can because of ``blocked_by`` (then ``reason`` says why)."""

    ready: bool
    waiting_for: int | None = None
    blocked_by: int | None = None
    reason: str | None = None


def deps_of(
    after: Sequence[int], after_any: Sequence[int], after_failed: Sequence[int]
) -> list[tuple[DepKind, int]]:
    """A task's dependencies as (kind, id) pairs, in the order the rule looks at them."""
    return [
        *((DepKind.AFTER, d) for d in after),
        *((DepKind.AFTER_ANY, d) for d in after_any),
        *((DepKind.AFTER_FAILED, d) for d in after_failed),
    ]


def verdict(deps: Sequence[tuple[DepKind, int]], states: Mapping[int, TaskState]) -> Verdict:
    """The rule for one pending task with dependencies ``deps``, given the current state of
    the tasks it names (an id missing from ``states`` was removed from the queue).

    A dependency that can never be met blocks the task (the first one found, in ``deps``
    order); else the first one not met yet is what the task waits for; else it is ready.
    """
    waiting: int | None = None
    for kind, dep in deps:
        state = states.get(dep)
        if state is None:
            return Verdict(False, blocked_by=dep, reason=f"dependency {dep} was removed")
        if state in READY_STATES[kind]:
            continue
        if state in FINAL_STATES:
            return Verdict(False, blocked_by=dep, reason=f"dependency {dep} {state}")
        if waiting is None:
            waiting = dep
    if waiting is not None:
        return Verdict(False, waiting_for=waiting)
    return Verdict(True)


def waiting_reason(dep: int) -> str:
    """The pending reason of a task waiting for task ``dep``."""
    return f"waits for task {dep}"


@dataclass(frozen=True)
class Gate:
    """A dependency a task submitted ahead to a cluster waits for there: the run of task
    ``task`` now in SLURM job ``job_id``. ``last``: that run is the task's last attempt, so its
    failure is final (a loss never is: a lost run is retried)."""

    kind: DepKind
    task: int
    run_id: str
    job_id: str
    last: bool


def gates(
    deps: Sequence[tuple[DepKind, int]],
    states: Mapping[int, TaskState],
    live: Mapping[int, Task],
    clusters: frozenset[str],
) -> tuple[str, list[Gate]] | None:
    """Where a waiting task may be submitted ahead, and what SLURM holds it back on: the one
    cluster (of ``clusters``) on which every dependency not met yet is running with a job id
    (``live``: the launching and running tasks); None when there is none, or when a
    dependency can never be met (``verdict`` cancels the task then)."""
    host: str | None = None
    out: list[Gate] = []
    for kind, dep in deps:
        state = states.get(dep)
        if state is not None and state in READY_STATES[kind]:
            continue
        run = live.get(dep)
        if state is not TaskState.RUNNING or run is None or run.host not in clusters:
            return None
        if run.job_id is None or run.run_id is None or host not in (None, run.host):
            return None
        host = run.host
        last = real_attempts(run) >= run.max_attempts
        out.append(Gate(kind, dep, run.run_id, run.job_id, last))
    return (host, out) if host is not None else None
