"""Where the queue is: found upward from the current directory as git finds ``.git``; only adding
tasks creates one; ``--db`` and ``$LABTASKER_DB`` win; a command that only uses a queue and finds
none says so in one line and creates nothing (docs/queue.md "Where the queue lives")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher import Queue
from dispatcher.cli import _register, app
from dispatcher.errors import NoQueueError, TaskNotFoundError

_register()

#: Every command that uses a queue without adding tasks (``dispatch`` gets a hosts file).
READERS: list[list[str]] = [
    ["queue", "ls"],
    ["queue", "ls", "--json"],
    ["status"],
    ["status", "--json"],
    ["results"],
    ["results", "--format", "csv"],
    ["sql", "SELECT 1"],
    ["logs", "1"],
    ["queue", "cancel", "1"],
    ["queue", "retry", "--failed"],
    ["queue", "update", "1", "--priority", "2"],
    ["queue", "rm", "1"],
    ["hosts", "resume", "gpu-a"],
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path/proj`` with a subdirectory ``a/b``; no LABTASKER_DB; cwd unchanged."""
    monkeypatch.delenv("LABTASKER_DB", raising=False)
    (tmp_path / "proj" / "a" / "b").mkdir(parents=True)
    (tmp_path / "hosts.toml").write_text("[hosts.local]\n")
    return tmp_path / "proj"


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def files(root: Path) -> list[str]:
    """Every path under ``root``, less the project snapshots an add stores beside its queue."""
    found = (p.relative_to(root).as_posix() for p in root.rglob("*"))
    return sorted(p for p in found if "/.labtasker/snapshots" not in f"/{p}")


def no_queue(looked_in: str) -> str:
    return (
        f"Error: no queue here (looked in {looked_in}); add tasks with `labtasker queue add`,"
        " or pass --db\n"
    )


def no_queue_at(path: Path) -> str:
    """The error for a --db or LABTASKER_DB path without a queue: no advice to pass --db."""
    return (
        f"Error: no queue at {path} (named by --db or $LABTASKER_DB); add tasks to it with"
        " `labtasker queue add`, or check the path\n"
    )


def test_commands_that_only_use_a_queue_find_none_and_create_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = project / "a" / "b"
    monkeypatch.chdir(here)
    before = files(project.parent)
    hosts = str(project.parent / "hosts.toml")
    for argv in [*READERS, ["dispatch", "--hosts", hosts]]:
        result = cli(*argv)
        message = no_queue(f".labtasker/queue.duckdb in {here} and above")
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", message), argv
    assert files(project.parent) == before  # no .labtasker anywhere


def test_a_missing_db_or_env_path_is_named_and_nothing_is_created(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    missing = project / "nonexistent" / "dir" / "q.duckdb"
    before = files(project.parent)
    for argv in READERS:
        result = cli("--db", str(missing), *argv)
        assert (result.exit_code, result.stderr) == (1, no_queue_at(missing)), argv
    monkeypatch.setenv("LABTASKER_DB", str(missing))
    result = cli("status")
    assert (result.exit_code, result.stderr) == (1, no_queue_at(missing))
    assert files(project.parent) == before


def test_the_queue_of_a_parent_directory_is_found_like_git(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    assert cli("queue", "add", "--", "echo", "top").exit_code == 0
    assert files(project) == [".labtasker", ".labtasker/queue.duckdb", "a", "a/b"]
    monkeypatch.chdir(project / "a" / "b")
    added = cli("queue", "add", "--", "echo", "deep")  # into the queue found above
    assert added.stdout.startswith("Added 1 task (id 2).\nSnapshot ")
    listed = json.loads(cli("queue", "ls", "--json").stdout)
    assert [t["command"] for t in listed] == ["echo top", "echo deep"]
    assert not (project / "a" / "b" / ".labtasker").exists()
    assert Queue().path == project / ".labtasker" / "queue.duckdb"  # the API finds it too
    # --db and $LABTASKER_DB win over the search; adding to them creates them.
    other = project.parent / "other.duckdb"
    assert cli("--db", str(other), "queue", "add", "--", "echo", "elsewhere").exit_code == 0
    monkeypatch.setenv("LABTASKER_DB", str(other))
    assert [t["command"] for t in json.loads(cli("queue", "ls", "--json").stdout)] == [
        "echo elsewhere"
    ]


def test_add_creates_the_queue_where_none_is_found(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "a")
    with pytest.raises(NoQueueError, match="no queue here"):  # the API reads nothing either
        Queue().tasks()
    assert files(project) == ["a", "a/b"]
    assert Queue().add("echo %{x}", grid={"x": [1]}) == [1]
    assert files(project / "a") == [".labtasker", ".labtasker/queue.duckdb", "b"]
    assert os.stat(project / "a" / ".labtasker").st_mode & 0o777 == 0o700


@pytest.mark.parametrize("option", ["--after", "--after-any", "--after-failed"])
def test_an_add_refused_for_its_dependencies_creates_no_queue(
    project: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    # No queue yet, so no task to wait for: refused before any directory or snapshot is made.
    monkeypatch.chdir(project / "a")
    result = cli("queue", "add", option, "7", option, "3", "--", "echo", "hi")
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (
        f"Error: {option} names tasks 3, 7, not in the queue; see `labtasker queue ls`\n"
    )
    with pytest.raises(TaskNotFoundError, match="--after names task 1, not in the queue"):
        Queue().add("echo hi", after=[1])
    for refused in (["--", "echo", "%{x}"], ["--grid", "x=1,,2", "--", "echo", "%{x}"]):
        assert cli("queue", "add", *refused).exit_code == 2  # its template, its args
    assert files(project) == ["a", "a/b"]
    assert cli("queue", "ls").stderr == no_queue(
        f".labtasker/queue.duckdb in {project / 'a'} and above"
    )


def test_the_help_of_db_says_the_queue_is_looked_for_upward() -> None:
    text = " ".join(CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout.split())
    assert "Default: $LABTASKER_DB, else .labtasker/queue.duckdb here or above." in text


def _forever(project: Path) -> subprocess.Popen[str]:
    """``dispatch --forever`` in ``project``, which has no queue yet, once it says it waits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "dispatch", "--forever", "--hosts", "../hosts.toml"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("No queue at ") and "waiting for `labtasker queue add`" in line, line
    return proc


def test_dispatch_forever_waits_for_the_first_add_and_creates_nothing_meanwhile(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user may start ``dispatch --forever`` first and add tasks after: it waits for the
    queue file (making none), then runs what is added; Ctrl-C while waiting starts nothing."""
    before = files(project.parent)
    proc = _forever(project)
    assert files(project.parent) == before  # waiting made nothing
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Stopped waiting" in out and not err, (out, err)
    assert files(project.parent) == before
    proc = _forever(project)
    try:
        monkeypatch.chdir(project)
        (task,) = Queue().add("echo hi", gpus=0)
        deadline = time.monotonic() + 60
        while Queue().tasks(ids=[task])[0]["state"] != "succeeded":
            assert time.monotonic() < deadline, "the task added after the start never ran"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
