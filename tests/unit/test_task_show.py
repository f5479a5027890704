"""Why a task failed, through the real CLI after a real dispatch on a local host
(tests/loop_lab.py): the reason column of ``queue ls``, ``status`` and ``results``, wrapped and
never cut, and ``queue show ID`` (text and JSON) with every attempt."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher.cli import app
from tests.loop_lab import LocalLab, until

ATTEMPT_KEYS = ["attempt", "host", "gpus", "run_id", "started_at", "finished_at", "exit_code",
                "signal", "reason"]  # fmt: skip
LONG = "the reason is long enough that it has to wrap in an eighty column terminal and it must"


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LocalLab]:
    lab = LocalLab(tmp_path / "lab", {"a": 1})
    yield lab
    await lab.close()


def run(lab: LocalLab, *args: str, width: int = 80) -> Any:
    env = {"COLUMNS": str(width)}
    return CliRunner().invoke(app, ["--db", str(lab.db), *args], env=env)


def ok(lab: LocalLab, *args: str, width: int = 80) -> str:
    result = run(lab, *args, width=width)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return str(result.stdout)


def add(lab: LocalLab, cmd: str, *options: str) -> int:
    out = json.loads(ok(lab, "queue", "add", "--json", "--gpus", "0", "--cmd", cmd, *options))
    (task,) = out
    return int(task)


def words(text: str) -> str:
    """The text with its line breaks, padding and column rules gone: a wrapped cell (of a
    table with a single row per task, as here) reads whole again."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
async def failed(lab: LocalLab) -> dict[str, int]:
    """Three finished tasks: one failed twice (exit 3), one killed by SIGKILL, one whose
    reason is long (its exit code 3 and a note that its result file was not JSON)."""
    tasks = {
        "exit": add(lab, "echo oops; exit 3", "--max-attempts", "2"),
        "killed": add(lab, "kill -KILL $$"),
        "long": add(lab, f"echo not-json > $LABTASKER_RESULT; echo {LONG}; exit 4"),
    }
    code, _ = await lab.dispatch()
    assert code == 1
    return tasks


async def test_the_reason_column_in_ls_status_and_results(
    lab: LocalLab, failed: dict[str, int]
) -> None:
    long_reason = json.loads(ok(lab, "queue", "show", str(failed["long"]), "--json"))["reason"]
    assert long_reason.startswith("exit 4; result not recorded") and len(long_reason) > 40
    for argv in (("queue", "ls"), ("status",), ("results",)):
        out = ok(lab, *argv)
        assert "reason" in out.splitlines()[0] or "reason" in out, (argv, out)
        flat = words(out)
        for reason in ("exit 3", "killed by SIGKILL", long_reason):
            assert words(reason) in flat, (argv, reason, out)
        assert "…" not in out, (argv, out)  # wrapped, not cut
        assert max(len(line) for line in out.splitlines()) <= 80, out


async def test_no_reason_column_when_no_task_has_one(lab: LocalLab) -> None:
    add(lab, "true")
    await lab.dispatch()
    for argv in (("queue", "ls"), ("results",)):
        assert "reason" not in ok(lab, *argv), argv


async def test_queue_show_lists_every_attempt(lab: LocalLab, failed: dict[str, int]) -> None:
    task_id = failed["exit"]
    shown = json.loads(ok(lab, "queue", "show", str(task_id), "--json"))
    (listed,) = [t for t in json.loads(ok(lab, "queue", "ls", "--json")) if t["id"] == task_id]
    assert {k: v for k, v in shown.items() if k != "attempts"} == listed
    assert list(shown) == [*listed, "attempts"]
    attempts = shown["attempts"]
    assert [list(a) for a in attempts] == [ATTEMPT_KEYS, ATTEMPT_KEYS]
    got = [(a["attempt"], a["host"], a["gpus"], a["exit_code"], a["signal"], a["reason"])
           for a in attempts]  # fmt: skip
    assert got == [(1, "a", [], 3, None, "exit 3"), (2, "a", [], 3, None, "exit 3")]
    assert len({a["run_id"] for a in attempts}) == 2
    assert all(a["started_at"] <= a["finished_at"] for a in attempts)
    assert attempts[-1]["run_id"] == listed["run_id"]
    (killed,) = json.loads(ok(lab, "show", str(failed["killed"]), "--json"))["attempts"]
    assert (killed["exit_code"], killed["signal"]) == (None, "SIGKILL")
    assert killed["reason"] == "killed by SIGKILL"
    text = ok(lab, "queue", "show", str(task_id))
    assert text.startswith(f"task {task_id}  failed\n")
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "echo oops; exit 3" in text and "attempts 2/2" in text
    flat = words(text)
    for a in attempts:
        assert f"attempt {a['attempt']} a · run {a['run_id']} {_when(a)}" in flat, text
        assert re.search(rf"{_when(a, 'finished_at')} \(\d+s\) · exit 3 exit 3", flat), text
    killed_text = words(ok(lab, "show", str(failed["killed"])))
    assert "· signal SIGKILL killed by SIGKILL" in killed_text


def _when(attempt: dict[str, Any], key: str = "started_at") -> str:
    return str(attempt[key]).replace("T", " ")[:19]


async def test_queue_show_names_the_dependencies_and_an_unknown_id(lab: LocalLab) -> None:
    first = add(lab, "exit 1")
    second = add(lab, "true", "--after", str(first), "--after-failed", str(first))
    text = words(ok(lab, "show", str(second)))
    assert f"after {first} (pending) after-failed {first} (pending)" in text
    assert f"reason waits for task {first}" in text and "No attempts yet." in text
    bad = run(lab, "queue", "show", "99")
    assert bad.exit_code == 2 and bad.stdout == ""
    assert bad.stderr.startswith("Error: task 99 not in the queue")
    assert bad.stderr.count("\n") == 1


async def test_the_attempt_in_flight_is_last_without_an_end(lab: LocalLab) -> None:
    gate = lab.root / "go"
    (task_id,) = lab.add(1, exit_code=5, gate=gate)
    running = lab.start()
    await until(lambda: lab.starts(), "the task started", running)
    await until(lambda: lab.tasks()[task_id].state == "running", "recorded running", running)
    (attempt,) = json.loads(ok(lab, "show", str(task_id), "--json"))["attempts"]
    assert attempt["attempt"] == 1 and attempt["host"] == "a" and attempt["started_at"]
    assert (attempt["finished_at"], attempt["exit_code"], attempt["signal"]) == (None, None, None)
    assert "→ still running" in ok(lab, "show", str(task_id))
    gate.touch()
    assert await running == 1
    (attempt,) = json.loads(ok(lab, "show", str(task_id), "--json"))["attempts"]
    assert (attempt["exit_code"], attempt["reason"]) == (5, "exit 5")
