"""``labtasker logs ID --follow`` on a task that runs but has printed nothing yet, through the real
CLI on a local host (tests/loop_lab.py): it keeps following, prints the output as it comes, and
exits 0 when the task ends."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatcher.cli import app
from dispatcher.core.models import TaskState
from tests.loop_lab import DEADLINE, REPO, LocalLab, until


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LocalLab]:
    lab = LocalLab(tmp_path / "lab", {"a": 1})
    yield lab
    await lab.close()


def cli(lab: LocalLab, *args: str) -> str:
    result = CliRunner().invoke(app, ["--db", str(lab.db), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the follower's helper, once it reads the host)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def follow(lab: LocalLab, task: int) -> subprocess.Popen[str]:
    """``logs TASK --follow`` in the background (reaped or killed at teardown)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(LABTASKER_LOCK_TIMEOUT="30")
    argv = [sys.executable, "-m", "dispatcher", "--db", str(lab.db), "logs", str(task)]
    proc = subprocess.Popen(
        [*argv, "--follow", "--hosts", str(lab.hosts_path)], cwd=lab.root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lab.started.append(proc)
    return proc


async def run_gated(lab: LocalLab, tmp_path: Path, then: str) -> tuple[int, asyncio.Task[int]]:
    """A task that marks its start in a file (not in its output), prints nothing until the gate
    file exists, then runs ``then``; dispatched, and running. (id, the dispatch)."""
    gate, started = tmp_path / "gate", tmp_path / "started"
    cmd = (
        f"touch {started}; n=0; while [ ! -e {gate} ] && [ $n -lt 3000 ]; do sleep 0.02;"
        f" n=$((n + 1)); done; {then}"
    )
    out = json.loads(cli(lab, "queue", "add", "--json", "--gpus", "0", "--cmd", cmd))
    (task,) = out["ids"] if isinstance(out, dict) else out
    running = lab.start()
    await until(started.exists, "the task started", running)
    await until(lambda: lab.tasks()[task].state == TaskState.RUNNING, "running", running)
    return task, running


async def open_gate_once_attached(proc: subprocess.Popen[str], tmp_path: Path) -> None:
    """Let the task go on once the follower reads its host through a helper of its own (or has
    given up: the exit the test then catches)."""
    await until(lambda: proc.poll() is not None or children(proc.pid), "follower attached")
    (tmp_path / "gate").touch()


async def test_follow_on_a_running_task_with_no_output_yet_keeps_following(
    lab: LocalLab, tmp_path: Path
) -> None:
    task, running = await run_gated(lab, tmp_path, "echo late-line; sleep 0.5; echo last-line")
    proc = follow(lab, task)
    await open_gate_once_attached(proc, tmp_path)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, (out, err)
    assert out == "late-line\nlast-line\n", (out, err)
    assert await running == 0
    assert cli(lab, "logs", str(task)) == out


async def test_follow_on_a_running_task_that_never_prints_ends_with_it(
    lab: LocalLab, tmp_path: Path
) -> None:
    task, running = await run_gated(lab, tmp_path, "sleep 0.5")
    proc = follow(lab, task)
    await open_gate_once_attached(proc, tmp_path)
    out, err = proc.communicate(timeout=DEADLINE)
    assert (proc.returncode, out) == (0, ""), (out, err)
    assert await running == 0
    assert lab.tasks()[task].state == TaskState.SUCCEEDED
