"""The ``on_finish`` hook: a shell command run on the controller after a task reaches a final state.

The task's fields reach the command only through its environment (``LABTASKER_*``), never pasted
into the shell text, so arguments cannot inject commands. ``secret_env`` variables are taken out of
the environment it inherits: a secret reaches tasks and nothing else. The hook runs asynchronously
with a time limit; a failure is reported as one line and never stops the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Collection
from pathlib import Path

from dispatcher.core.models import Task, TaskState

#: Seconds a hook may run before it (and its process group) is killed.
HOOK_TIMEOUT = 60.0
#: Final states that run the hook (a lost task reaches ``failed`` when it is not requeued).
HOOK_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


def hook_env(task: Task, state: TaskState, log: Path | None) -> dict[str, str]:
    """The ``LABTASKER_*`` variables describing ``task``, which ended in ``state``."""
    runtime = ""
    if task.started_at and task.finished_at:
        runtime = f"{(task.finished_at - task.started_at).total_seconds():.3f}"
    return {
        "LABTASKER_TASK_ID": str(task.id),
        "LABTASKER_STATE": str(state),
        "LABTASKER_NAME": task.name or "",
        "LABTASKER_HOST": task.host or "",
        "LABTASKER_GPUS": ",".join(str(i) for i in task.gpu_ids or []),
        "LABTASKER_EXIT_CODE": "" if task.exit_code is None else str(task.exit_code),
        "LABTASKER_RUNTIME": runtime,
        "LABTASKER_COMMAND": task.command,
        "LABTASKER_ARGS": json.dumps(task.args, ensure_ascii=False),
        "LABTASKER_RESULT": "" if task.result is None else json.dumps(task.result),
        "LABTASKER_REASON": task.reason or "",
        "LABTASKER_LOG": "" if log is None else str(log),
        "LABTASKER_RUN_ID": task.run_id or "",
    }


async def run_hook(
    command: str,
    env: dict[str, str],
    *,
    timeout: float = HOOK_TIMEOUT,
    cwd: Path | None = None,
    hide: Collection[str] = (),
) -> str | None:
    """Run ``command`` with ``/bin/sh -c``; None when it exited 0, else what went wrong.

    It inherits this process's environment without the variables named in ``hide``, plus ``env``.

    Its output is discarded except the last lines of stderr, quoted in the problem text.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=_inherited(hide) | env, cwd=cwd,
            start_new_session=True,  # its own process group: a timeout kills what it started
        )  # fmt: skip
    except OSError as err:
        return f"cannot start /bin/sh: {err.strerror or err}"
    try:
        _, err_bytes = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        return f"still running after {timeout:g} s; killed"
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    if proc.returncode == 0:
        return None
    tail = " | ".join(err_bytes.decode("utf-8", "replace").strip().splitlines()[-3:])
    return f"exit {proc.returncode}" + (f": {tail}" if tail else "")


def _inherited(hide: Collection[str]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in hide}


def _kill_group(pid: int) -> None:
    if pid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


async def on_finish(
    command: str,
    task: Task,
    state: TaskState,
    log: Path | None,
    warn: Callable[[str], None],
    *,
    timeout: float = HOOK_TIMEOUT,
    hide: Collection[str] = (),
) -> None:
    """Run the ``[controller] on_finish`` hook for ``task``; a failure becomes one ``warn`` line.

    ``hide``: the ``secret_env`` names, left out of the environment the hook inherits.
    """
    env = hook_env(task, state, log)
    problem = await run_hook(command, env, timeout=timeout, hide=hide)
    if problem:
        warn(
            f"on_finish hook for task {task.id} ({state}) failed: {problem}; "
            "fix [controller] on_finish in hosts.toml (the task's own outcome is recorded)"
        )
