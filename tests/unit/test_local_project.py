"""A ``[hosts.local]`` with shipping off (``sync = false``) runs tasks in the queue's project
directory (the one holding ``.labtasker/``) and keeps its run records beside the queue, never in
the home directory; a controller killed and restarted from another directory of the project
re-attaches to the run (docs/hosts.md, "The local host"). Through the real CLI, in subprocesses."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dispatcher.store.queue import Store
from tests.loop_lab import DEADLINE, REPO, alive

#: The project's script: records its start (pid) and working directory, waits for ``go`` in the
#: project when asked to, then writes a result.
TRAIN_PY = """\
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "journal.txt"), "a") as f:
    f.write("start %d %s\\n" % (os.getpid(), os.getcwd()))
if "--wait" in sys.argv:
    for _ in range(3000):
        if os.path.exists(os.path.join(here, "go")):
            break
        time.sleep(0.02)
with open(os.environ["LABTASKER_RESULT"], "w") as f:
    json.dump({"cwd": os.getcwd()}, f)
"""


class Project:
    """A project directory with ``train.py``, a ``[hosts.local]`` hosts file without shipping
    and a HOME of its own (outside the project), driven through ``python -m dispatcher``."""

    def __init__(self, root: Path) -> None:
        self.root = root / "proj"
        self.sub = self.root / "src" / "deep"
        self.sub.mkdir(parents=True)
        self.home = root / "home"
        self.home.mkdir()
        (self.root / "train.py").write_text(TRAIN_PY)
        (self.root / "hosts.toml").write_text("[hosts.local]\nsync = false\n")
        self.started: list[subprocess.Popen[str]] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.update(HOME=str(self.home), LABTASKER_LOCK_TIMEOUT="30", COLUMNS="200")
        return env

    def run(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatcher", *args], cwd=cwd, env=self.env(),
            capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip

    def start(self, cwd: Path, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", *args], cwd=cwd, env=self.env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.started.append(proc)
        return proc

    def journal(self) -> list[tuple[int, str]]:
        path = self.root / "journal.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(int(pid), cwd) for _, pid, cwd in (line.split(" ", 2) for line in lines)]

    def tasks(self) -> dict[int, dict[str, object]]:
        store = Store(self.root / ".labtasker" / "queue.duckdb", lock_timeout=30)
        return {t.id: t.to_json() for t in store.tasks()}


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    project = Project(tmp_path)
    yield project
    for proc in project.started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    for pid, _ in project.journal():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_for(check: Callable[[], object], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < end, f"{what}: not true within {DEADLINE:g} s"
        time.sleep(0.05)


def test_python_train_py_runs_in_the_project_from_any_of_its_directories(
    project: Project,
) -> None:
    python = shlex.quote(sys.executable)
    added = project.run(project.root, "queue", "add", "--", python, "train.py")
    assert added.returncode == 0, added
    added = project.run(project.sub, "queue", "add", "--", python, "train.py", "--from-sub")
    assert added.returncode == 0, added
    done = project.run(project.sub, "dispatch", "--hosts", "../../hosts.toml")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Done: 2 succeeded, 0 failed, 0 cancelled, 0 pending." in done.stdout
    tasks = project.tasks()
    assert [t["result"] for t in tasks.values()] == [{"cwd": str(project.root)}] * 2
    assert [cwd for _, cwd in project.journal()] == [str(project.root)] * 2
    # The run records live beside the queue; nothing went to the home directory.
    runs = project.root / ".labtasker" / "queue.runs" / "runs"
    assert {p.name for p in runs.iterdir()} <= {str(t["run_id"]) for t in tasks.values()}
    assert not (project.home / ".labtasker").exists()


def test_a_restarted_controller_finds_the_local_run_from_another_directory(
    project: Project,
) -> None:
    python = shlex.quote(sys.executable)
    added = project.run(project.root, "queue", "add", "--", python, "train.py", "--wait")
    assert added.returncode == 0, added
    first = project.start(project.sub, "dispatch", "--hosts", "../../hosts.toml")
    wait_for(lambda: project.journal(), "the task started")
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=DEADLINE)
    ((pid, _),) = project.journal()
    assert alive(pid)  # the run outlives its controller
    (project.root / "go").touch()
    again = project.run(project.root, "dispatch")  # another directory, the same queue
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert "Done: 1 succeeded, 0 failed, 0 cancelled, 0 pending." in again.stdout
    assert len(project.journal()) == 1  # re-attached, not started again
    assert project.tasks()[1]["state"] == "succeeded"
    assert not (project.home / ".labtasker").exists()


def test_the_projects_hosts_file_and_workdir_serve_its_subdirectories(project: Project) -> None:
    missing = project.run(project.sub, "hosts", "check")  # no queue yet: nothing to go by
    assert missing.returncode == 2
    assert missing.stderr.startswith("Error: hosts file ./hosts.toml not found")
    assert project.run(project.root, "queue", "add", "--", "true").returncode == 0
    check = project.run(project.sub, "hosts", "check")  # ./hosts.toml, else the project's
    assert check.returncode == 0, (check.stdout, check.stderr)
    assert str(project.root) in check.stdout.split()  # the workdir column: the project
    done = project.run(project.sub, "dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Done: 1 succeeded, 0 failed, 0 cancelled, 0 pending." in done.stdout
    (project.root / "hosts.toml").unlink()
    gone = project.run(project.sub, "dispatch")
    assert gone.returncode == 2
    assert gone.stderr == (
        f"Error: hosts file ./hosts.toml (nor {project.root / 'hosts.toml'}) not found; create"
        " one (see docs/hosts.md) or pass --hosts PATH\n"
    )


def test_output_globs_of_a_bare_local_host_are_relative_to_the_project(project: Project) -> None:
    script = "mkdir -p out/%{lr} && echo %{lr} > out/%{lr}/m.txt"
    added = project.run(project.root, "queue", "add", "--grid", "lr=1,2", "--outputs",
                        "out/%{lr}/m.txt", "--cmd", script)  # fmt: skip
    assert added.returncode == 0, added
    done = project.run(project.sub, "dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert sorted(p.name for p in (project.root / "out").iterdir()) == ["1", "2"]
    outputs = project.root / ".labtasker" / "queue.outputs"
    for task_id, lr in ((1, "1"), (2, "2")):
        copied = sorted(p.relative_to(outputs / str(task_id)).as_posix()
                        for p in (outputs / str(task_id)).rglob("*") if p.is_file())  # fmt: skip
        assert copied == [f"out/{lr}/m.txt"], copied
