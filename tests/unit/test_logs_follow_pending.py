"""``labtasker logs ID --follow`` started before the task runs (the README's own sequence), through
the real CLI on a local host (tests/loop_lab.py): it waits for the start, then follows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatcher.cli import app
from tests.loop_lab import DEADLINE, REPO, LocalLab


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LocalLab]:
    lab = LocalLab(tmp_path / "lab", {"a": 1})
    yield lab
    await lab.close()


def cli(lab: LocalLab, *args: str) -> str:
    result = CliRunner().invoke(app, ["--db", str(lab.db), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def add(lab: LocalLab, cmd: str) -> int:
    out = json.loads(cli(lab, "queue", "add", "--json", "--gpus", "0", "--cmd", cmd))
    (task,) = out["ids"] if isinstance(out, dict) else out
    return int(task)


def follow(lab: LocalLab, task: int) -> subprocess.Popen[str]:
    """``logs TASK --follow`` in the background, once it has said that it waits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(LABTASKER_LOCK_TIMEOUT="30")
    argv = [sys.executable, "-m", "dispatcher", "--db", str(lab.db), "logs", str(task)]
    proc = subprocess.Popen(
        [*argv, "--follow", "--hosts", str(lab.hosts_path)], cwd=lab.root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lab.started.append(proc)
    assert proc.stderr is not None
    first = proc.stderr.readline()  # a line, or "" if it exits first
    assert first == f"waiting for task {task} to start...\n", (first, proc.communicate())
    return proc


async def test_follow_on_a_pending_task_waits_for_it_then_prints_its_output(
    lab: LocalLab,
) -> None:
    task = add(lab, "echo first-line; sleep 1; echo last-line")
    assert lab.tasks()[task].state == "pending"
    proc = follow(lab, task)  # still pending: nothing dispatches yet
    code, lines = await lab.dispatch()
    assert code == 0, lines
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, (out, err)
    assert out == "first-line\nlast-line\n", (out, err)
    assert err == ""
    assert cli(lab, "logs", str(task)) == out  # the kept copy says the same


async def test_follow_on_a_task_cancelled_before_it_started_ends_with_one_line(
    lab: LocalLab,
) -> None:
    task = add(lab, "echo never")
    proc = follow(lab, task)
    cli(lab, "queue", "cancel", str(task))
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1, (out, err)
    assert out == "" and err.startswith(f"Error: task {task} was cancelled before it started")
    assert err.count("\n") == 1, err
