"""What a finished run means for its task: pure functions from a helper's run report to a state.

No I/O and no clock: the dispatcher feeds in the report (see dispatcher/remote/helper.py) and the
task, and gets back the state to move to, the fields to record and whether to requeue.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dispatcher.core.models import MAX_LOSSES, Task, TaskState


@dataclass(frozen=True)
class Outcome:
    """The move to apply for one finished (or lost) run, then an optional requeue."""

    state: TaskState
    fields: dict[str, Any] = field(default_factory=dict)
    requeue_reason: str | None = None  # set: move on to pending with this reason
    fail_after_loss: str | None = None  # set: a lost task that used up its losses -> failed
    counts_as_failure: bool = False  # for host suspension
    cuda_oom: bool = False  # died of CUDA out-of-memory: a retry wants a GPU with more memory


#: How frameworks report that the GPU ran out of memory (PyTorch, CUDA, cuBLAS, JAX/XLA).
_CUDA_OOM = re.compile(
    r"CUDA out of memory|CUDA error: out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED"
    r"|RESOURCE_EXHAUSTED: Out of memory"
)
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^'\s]{1,200})'")


def failure_kind(report: dict[str, Any]) -> str | None:
    """What a failed run died of, from its exit and its output's last lines: "killed by the
    OOM killer" (SIGKILL with an OOM kill recorded in its cgroup), "CUDA out of memory",
    "missing module NAME"; None when none of these."""
    code, tail = report.get("exit_code"), report.get("log_tail")
    if not isinstance(tail, str):
        tail = ""
    lines = "\n".join(tail.splitlines()[-40:])  # the last lines: not an old, handled error
    if report.get("oom_killed") and (code == -9 or report.get("signal") == "SIGKILL"):
        return "killed by the OOM killer"
    if _CUDA_OOM.search(lines):
        return "CUDA out of memory"
    missing = _MISSING_MODULE.findall(lines)
    return f"missing module {missing[-1]}" if missing else None


def parse_time(text: Any) -> datetime | None:
    """Parse the helper's ISO-8601 UTC timestamps ("2026-01-01T10:00:00.123Z")."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def describe_exit(exit_code: int | None, sig: str | None) -> str:
    """Human words for an exit: 'exit 3', 'killed by SIGKILL', 'exit 137 (SIGKILL?)'."""
    if exit_code is None:
        return "no exit status"
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    if sig:
        return f"killed by {sig}"
    if exit_code > 128:
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            return f"exit {exit_code}"
        return f"exit {exit_code} ({name}: killed by a signal, e.g. out of memory)"
    return f"exit {exit_code}"


def exit_and_signal(exit_code: int | None) -> tuple[int | None, str | None]:
    """A stored exit code as (exit code, signal name): a run killed by signal N is stored as
    -N (as ``Popen.returncode``) and comes out as (None, "SIGN...")."""
    if exit_code is None or exit_code >= 0:
        return exit_code, None
    try:
        return None, signal.Signals(-exit_code).name
    except ValueError:
        return None, f"signal {-exit_code}"


def without_host(host: str | None, text: str) -> str:
    """``text`` with each ``HOST: `` / ``HOST (ADDR): `` prefix (at its start or after a ``(``)
    cut to nothing / ``ADDR: ``: a reason that already names the host says it once."""
    if not host:
        return text
    pattern = rf"(^|\()({re.escape(host)}(?: \(([^()]*)\))?: )"
    return re.sub(pattern, lambda m: m[1] + (f"{m[3]}: " if m[3] else ""), text)


def real_attempts(task: Task) -> int:
    """Attempts that count against --max-attempts: losses are the host's fault, not the task's."""
    return max(task.attempt - task.losses, 0)


def outcome_of(report: dict[str, Any], task: Task) -> Outcome:
    """Map an exited run's report to the task's next state. ``report['state']`` is 'exited'."""
    exit_code = report.get("exit_code")
    code = exit_code if isinstance(exit_code, int) else None
    result = report.get("result") if isinstance(report.get("result"), dict) else None
    base: dict[str, Any] = {
        "exit_code": code,
        "result": result,
        "started_at": parse_time(report.get("started_at")) or task.started_at,
        "finished_at": parse_time(report.get("finished_at")),
    }
    notes = []
    if report.get("result_error"):
        notes.append(f"result not recorded: {report['result_error']}")
    if report.get("cancelled"):
        return Outcome(TaskState.CANCELLED, {**base, "reason": "cancelled by user"})
    refused = report.get("result_refused")  # over a limit (wire.py): the task fails
    if report.get("error") and report.get("pid") is None:
        reason = f"could not start: {report['error']}"
    elif report.get("error"):  # it ran; the helper adds why it ended (e.g. the disk is full)
        reason = f"{describe_exit(code, report.get('signal'))}; {report['error']}"
    elif report.get("timed_out"):
        limit = f" after {task.timeout:g}s" if task.timeout else ""
        reason = f"timed out{limit} ({describe_exit(code, report.get('signal'))})"
    elif code == 0 and not refused:
        return Outcome(TaskState.SUCCEEDED, {**base, "reason": "; ".join(notes) or None})
    elif code == 0:
        reason = "exit 0 but its result was refused"
        notes = [f"{refused}: write a smaller result to LABTASKER_RESULT"]
    else:
        reason = describe_exit(code, report.get("signal"))
    kind = None if report.get("timed_out") else failure_kind(report)
    reason = f"{kind} ({reason})" if kind else reason
    reason = "; ".join([reason, *notes])
    done = real_attempts(task)
    requeue = None
    if done < task.max_attempts:
        requeue = f"attempt {done}/{task.max_attempts} failed ({reason}); retrying"
    return Outcome(
        TaskState.FAILED,
        {**base, "reason": reason},
        requeue_reason=requeue,
        counts_as_failure=True,
        cuda_oom=kind == "CUDA out of memory",
    )


def lost_outcome(task: Task, why: str) -> Outcome:
    """A run whose process vanished without an exit record (host crash, reboot, grace passed)."""
    losses = task.losses + 1
    why = without_host(task.host, why)
    fields: dict[str, Any] = {"losses": losses, "reason": f"lost on {task.host}: {why}"}
    if losses >= MAX_LOSSES:
        return Outcome(
            TaskState.LOST,
            fields,
            fail_after_loss=f"lost {losses} times (last on {task.host}: {why}); giving up",
        )
    return Outcome(
        TaskState.LOST,
        fields,
        requeue_reason=f"requeued after being lost on {task.host} ({why})",
    )


def launch_error_outcome(task: Task, host: str, error: str) -> Outcome:
    """A launch the host refused (its workdir, its disk, a snapshot that could not be sent).

    Counted as a loss, not an attempt: most such errors are the host's, and the task should
    be free to run elsewhere (the host's failures count towards its suspension). Like a loss,
    it is bounded: after ``MAX_LOSSES`` the task fails with the last error, so a launch that
    fails the same way everywhere never loops.
    """
    losses = task.losses + 1
    why = f"launch on {host} failed: {without_host(host, error)}"
    if losses >= MAX_LOSSES:
        reason = f"could not launch {losses} times (last on {host}: {without_host(host, error)})"
        return Outcome(TaskState.FAILED, {"losses": losses, "reason": reason})
    return Outcome(TaskState.PENDING, {"losses": losses, "reason": why})


def withdrawn_outcome(task: Task, why: str) -> Outcome:
    """A SLURM job submitted ahead of its dependency's outcome that never started its task:
    the outcome held it back (or SLURM can never start it). Back to pending, neither an
    attempt nor a loss counted; the dependency rule then says what it waits for, or cancels
    it. One the user cancelled meanwhile is cancelled."""
    attempt = max(task.attempt - 1, 0)
    if task.cancel_requested:  # cancelled meanwhile (a move to pending would drop the request)
        return Outcome(TaskState.CANCELLED, {"attempt": attempt, "reason": "cancelled by user"})
    reason = f"withdrawn from {task.host}: {without_host(task.host, why)}"
    return Outcome(TaskState.PENDING, {"attempt": attempt, "reason": reason})
