"""The on_finish hook: task fields reach it through the environment only, with a time limit."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from dispatcher.core.models import Task, TaskState
from dispatcher.dispatch.hooks import hook_env, on_finish, run_hook


def a_task(**changes: object) -> Task:
    task = Task(
        id=7,
        state=TaskState.SUCCEEDED,
        args={"lr": 0.1, "name": "$(touch pwned)"},
        template="train --lr %{lr}",
        command="train --lr 0.1",
        name="sweep-a",
        host="gpu-a",
        gpu_ids=[0, 2],
        run_id="t7-a1-x",
        exit_code=0,
        result={"acc": 0.9},
        started_at=datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC),
        finished_at=datetime(2026, 1, 1, 10, 1, 30, tzinfo=UTC),
    )
    return task.replace(**changes)


def test_env_describes_the_task() -> None:
    env = hook_env(a_task(), TaskState.SUCCEEDED, Path("/q.logs/t7-a1-x.log"))
    assert env["LABTASKER_TASK_ID"] == "7"
    assert env["LABTASKER_STATE"] == "succeeded"
    assert env["LABTASKER_NAME"] == "sweep-a"
    assert env["LABTASKER_HOST"] == "gpu-a"
    assert env["LABTASKER_GPUS"] == "0,2"
    assert env["LABTASKER_EXIT_CODE"] == "0"
    assert env["LABTASKER_RUNTIME"] == "90.000"
    assert env["LABTASKER_COMMAND"] == "train --lr 0.1"
    assert json.loads(env["LABTASKER_ARGS"]) == {"lr": 0.1, "name": "$(touch pwned)"}
    assert json.loads(env["LABTASKER_RESULT"]) == {"acc": 0.9}
    assert env["LABTASKER_LOG"] == "/q.logs/t7-a1-x.log"


def test_unknown_fields_are_empty_strings() -> None:
    task = a_task(name=None, gpu_ids=None, exit_code=None, result=None, started_at=None)
    env = hook_env(task, TaskState.FAILED, None)
    for key in ("NAME", "GPUS", "EXIT_CODE", "RESULT", "RUNTIME", "LOG"):
        assert env[f"LABTASKER_{key}"] == "", key


async def test_hook_sees_values_without_running_them(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    command = f'python3 -c "import json, os; print(json.dumps(dict(os.environ)))" > {out}'
    env = hook_env(a_task(), TaskState.SUCCEEDED, None)
    assert await run_hook(command, env, cwd=tmp_path) is None
    seen = json.loads(out.read_text())
    assert {k: seen[k] for k in env} == env
    assert not (tmp_path / "pwned").exists()  # "$(touch pwned)" stayed a value


async def test_a_failing_hook_is_reported_with_its_stderr() -> None:
    problem = await run_hook("echo 'no such notifier' >&2; exit 3", {})
    assert problem == "exit 3: no such notifier"


async def test_a_hook_past_its_time_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    problem = await run_hook(f"sleep 30 & echo $! > {pid_file}; wait", {}, timeout=0.5)
    assert problem == "still running after 0.5 s; killed"
    pid = int(pid_file.read_text())
    state = "?"
    deadline = time.monotonic() + 10  # SIGKILL is delivered at once, but the exit is not
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return  # gone and reaped
        state = stat.rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return  # killed, waiting for its reaper
        await asyncio.sleep(0.02)
    raise AssertionError(f"the hook's child {pid} still runs (state {state})")


async def test_on_finish_warns_once_and_never_raises() -> None:
    lines: list[str] = []
    await on_finish("exit 1", a_task(), TaskState.FAILED, None, lines.append)
    assert len(lines) == 1
    assert "on_finish hook for task 7 (failed) failed: exit 1" in lines[0]
    assert "[controller] on_finish" in lines[0]
    await on_finish("true", a_task(), TaskState.SUCCEEDED, None, lines.append)
    assert len(lines) == 1
