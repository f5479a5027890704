"""Why a task failed, in words that blame the right thing and are never cut: a command that fails
the same way on every host is named as the problem (no host is suspended for it); a host that
fails where another succeeds is suspended, and every line about it is whole; the messages of
dispatch and the queue commands use one wording (empty queue, plurals, cancelled tasks, the
hosts.toml name of a host). Through the real CLI on local hosts (tests/loop_lab.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher.cli import app
from dispatcher.core.words import EMPTY_QUEUE
from dispatcher.store.queue import Store
from tests.loop_lab import DEADLINE, REPO, LocalLab, until


@pytest.fixture
async def labs(tmp_path: Path) -> AsyncIterator[list[LocalLab]]:
    made: list[LocalLab] = []
    yield made
    for lab in made:
        await lab.close()


def make(labs: list[LocalLab], root: Path, hosts: dict[str, int], **settings: Any) -> LocalLab:
    lab = LocalLab(root / f"lab{len(labs)}", hosts, settings)
    labs.append(lab)
    return lab


def cli(lab: LocalLab, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", str(lab.db), *args])


def add(lab: LocalLab, *argv: str) -> None:
    result = cli(lab, "queue", "add", "--gpus", "0", *argv)
    assert result.exit_code == 0, (result.stdout, result.stderr)


def dispatch(lab: LocalLab) -> tuple[int, str, str]:
    proc = lab.dispatch_cli()
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out, err


async def test_a_command_failing_the_same_way_everywhere_is_blamed_not_the_host(
    labs: list[LocalLab], tmp_path: Path
) -> None:
    lab = make(labs, tmp_path, {"box": 1})  # suspend_after_failures: the default, 5
    python = shlex.quote(sys.executable)
    add(lab, "--grid", "i=1,2,3,4,5,6,7", "--", python, "missing.py", "%{i}")
    code, out, err = dispatch(lab)
    assert code == 1, (out, err)
    assert "suspended" not in out + err
    assert "Done: 0 succeeded, 7 failed, 0 cancelled, 0 pending." in out
    assert "tasks fail the same way on every host (exit 2): the command is the problem" in out
    assert err == (
        "Error: 7 tasks (1-7) failed the same way on every host (exit 2): the command is the"
        " problem, not the hosts; `labtasker logs 1` shows what it printed; fix the command,"
        " then `labtasker queue retry --failed`\n"
    )
    assert {t.state for t in lab.tasks().values()} == {"failed"}
    assert "suspended" not in cli(lab, "status").stdout  # none on record either


async def test_a_host_failing_where_another_works_is_suspended_in_whole_sentences(
    labs: list[LocalLab], tmp_path: Path
) -> None:
    lab = make(labs, tmp_path, {"bad": 1, "good": 1}, suspend_after_failures=2)
    lab.write_hosts(per_host={"bad": {"setup": "exit 7"}})  # say, a missing venv
    gate = lab.root / "go"
    ids = lab.add(4, gate=gate, options=("--max-attempts", "5"))
    proc = lab.dispatch_cli()
    hint = "fix the host, then `labtasker hosts resume bad` or restart dispatch"

    def status() -> str:
        return str(cli(lab, "status").stdout)

    shown = "no free slot: bad suspended after"
    await until(lambda: shown in " ".join(status().split()), "bad suspended, as status shows")
    text = " ".join(status().split())  # rich wraps long lines; the words stay whole
    assert "..." not in text and "…" not in text, text
    reason = "bad suspended after 2 failures in a row (exit 7)"
    assert f"3 pending: no free slot: {reason}; good 1/1 slots used" in text
    assert f"host {reason} since " in text and f" UTC; {hint}" in text, text
    gate.touch()
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, (out, err)
    assert f"bad: suspended after 2 failures in a row (exit 7); {hint}\n" in out
    assert "the command is the problem" not in out
    assert {lab.tasks()[i].state for i in ids} == {"succeeded"}


async def test_dispatch_names_the_host_as_hosts_toml_does_and_counts_cancelled_tasks(
    labs: list[LocalLab], tmp_path: Path
) -> None:
    lab = make(labs, tmp_path, {"lab-box": 2})
    gate = lab.root / "go"
    add(lab, "--", "no-such-command-anywhere", "--flag")
    (held,) = lab.add(1, gate=gate)
    proc = lab.dispatch_cli()
    await until(lambda: lab.tasks()[held].state == "running", "the gated task runs")
    assert cli(lab, "queue", "cancel", str(held)).exit_code == 0
    out, err = proc.communicate(timeout=DEADLINE)
    assert "Done: 0 succeeded, 1 failed, 1 cancelled, 0 pending." in out, (out, err)
    why = "could not start: no-such-command-anywhere: command not found on lab-box"
    assert lab.tasks()[1].reason == why
    assert f"task 1 failed on lab-box ({why})" in out


def test_one_wording_for_an_empty_queue_and_plurals_that_agree(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, ["--db", str(db), *args])

    Store(db).counts()  # a queue without tasks
    assert run("queue", "ls").stdout == EMPTY_QUEUE + "\n"
    assert run("results").stderr == EMPTY_QUEUE + "\n"
    assert run("status").stdout == f"Nothing is running.\n{EMPTY_QUEUE}\n"
    assert run("queue", "add", "--cmd", "echo %{x}", "--grid", "x=1,2,3").exit_code == 0
    assert run("queue", "cancel", "2").stdout == "Cancelled 1 pending task.\n"
    assert run("queue", "retry", "2").stdout == "Retrying 1 task (id 2): back to pending.\n"
    assert run("queue", "update", "3", "--priority", "1").stdout == "Updated 1 task (id 3).\n"
    assert run("queue", "rm", "1", "3").stdout == "Removed 2 tasks (ids 1, 3).\n"
    missing = run("queue", "cancel", "2", "99")
    assert missing.stderr.startswith("Error: task 99 not in the queue")
    missing = run("queue", "cancel", "98", "99")
    assert missing.stderr.startswith("Error: tasks 98, 99 not in the queue")
    for argv in (["queue", "show", "99"], ["queue", "update", "99", "--priority", "1"]):
        assert run(*argv).stderr.startswith("Error: task 99 not in the queue"), argv
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    logs = subprocess.run([sys.executable, "-m", "dispatcher", "--db", str(db), "logs", "99"],
                          env=env, capture_output=True, text=True, timeout=DEADLINE)  # fmt: skip
    assert logs.stderr.startswith("Error: task 99 not in the queue"), logs.stderr
    after = run("queue", "add", "--cmd", "x", "--after", "97")
    assert after.stderr.startswith("Error: --after names task 97, not in the queue")


async def test_tasks_no_host_can_take_are_named_with_words_that_agree(
    labs: list[LocalLab], tmp_path: Path
) -> None:
    # getting-started's `--gpus 1` on a CPU-only local host: one line, in the plural for several.
    lab = make(labs, tmp_path, {"cpu": 1})
    assert (
        cli(lab, "queue", "add", "--gpus", "1", "--grid", "x=1,2,3", "--cmd", "true").exit_code == 0
    )
    code, _, err = dispatch(lab)
    assert (code, err) == (1, (
        "Error: 3 tasks (1-3) cannot be placed: needs 1 GPU; no configured host has GPUs; they"
        " stay pending: add a host that fits, or `labtasker queue rm` them and add them again"
        " with fewer --gpus\n"
    ))  # fmt: skip
    assert cli(lab, "queue", "rm", "2", "3").exit_code == 0
    code, _, err = dispatch(lab)
    assert (code, err) == (1, (
        "Error: task 1 cannot be placed: needs 1 GPU; no configured host has GPUs; it stays"
        " pending: add a host that fits, or `labtasker queue rm` it and add it again with fewer"
        " --gpus\n"
    ))  # fmt: skip
