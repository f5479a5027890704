"""The ``lab`` fixture: a controller directory, a hosts.toml and the real ``labtasker`` CLI.

Commands run as ``python -m dispatcher`` subprocesses with HOME pointing at the test's ssh home, so
every path under test (CLI parsing, ~/.ssh/config, the queue file, exit codes) is the real one.
Tasks run ``examples/run_my_experiment.py`` from a directory every host's user can write to.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dispatcher.store.queue import Store
from tests.slurm import SlurmCluster, slurm_installed
from tests.sshd import SshdHosts, poll

if TYPE_CHECKING:
    from tests.integration.faults_lab import FaultLab

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "run_my_experiment.py"
#: Generous: the suite runs on loaded 2-core machines; passing runs finish far sooner.
DEADLINE = 60.0


@dataclass
class Lab:
    """One test's controller side; see the module docstring."""

    home: Path
    root: Path  # the controller's working directory (holds the queue and hosts.toml)
    shared: Path  # readable and writable by every host's user: the script and the records
    hosts: SshdHosts
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.root / "queue.duckdb"

    @property
    def records_path(self) -> Path:
        return self.shared / "records.jsonl"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
        env.update(HOME=str(self.home), COLUMNS="200", LABTASKER_LOCK_TIMEOUT="30")
        env.pop("SSH_AUTH_SOCK", None)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "dispatcher", "--db", str(self.db), *args]

    def run(self, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        """Run one labtasker command to completion."""
        return subprocess.run(
            self.argv(*args),
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> str:
        """Run a command that must succeed; its stdout."""
        done = self.run(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start a long-running command (dispatch) in the background; stopped at teardown."""
        proc = subprocess.Popen(
            self.argv(*args),
            cwd=self.root,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        """Interrupt what a failed test left running (Ctrl-C, then kill) and reap it."""
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.communicate(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.communicate()

    def write_hosts(self, text: str, name: str = "hosts.toml") -> Path:
        path = self.root / name
        path.write_text(text)
        return path

    def hosts_toml(self, *names: str, **extra: dict[str, Any]) -> Path:
        """A hosts.toml naming ``names`` (ssh aliases); ``cpu`` gets 2 slots. Each host sets
        EXPERIMENT_HOST so the tasks' records say where they ran."""
        blocks = [f'[defaults]\nworkdir = "{self.shared}"\nkeepalive_interval = 1\n']
        for name in names:
            lines = [f"[hosts.{name}]", f'env = {{ EXPERIMENT_HOST = "{name}" }}']
            if name == "cpu":
                lines.append("slots = 2")
            for key, value in extra.get(name, {}).items():
                lines.append(f"{key} = {json.dumps(value)}")
            blocks.append("\n".join(lines) + "\n")
        return self.write_hosts("\n".join(blocks))

    def add(self, *args: str, sleep: float = 0.1, extra: str = "") -> list[int]:
        """``queue add`` of run_my_experiment.py tasks; the new ids."""
        cmd = (
            f"python3 {self.shared / EXAMPLE.name} --param1 %{{p1}} --param2 %{{p2}} "
            f"--param3 %{{p3}} --sleep {sleep} --record {self.records_path} {extra}"
        ).strip()
        return self.add_cmd(cmd, *args)

    def add_cmd(self, cmd: str, *args: str) -> list[int]:
        """``queue add --cmd CMD ARGS``; the new ids."""
        ids = json.loads(self.ok("queue", "add", "--json", "--cmd", cmd, *args))
        return list(ids["ids"] if isinstance(ids, dict) else ids)

    def tasks(self) -> list[dict[str, Any]]:
        """Every task in ``queue ls --json``'s shape, read in-process (a CLI start costs 0.5 s)."""
        return [t.to_json() for t in Store(self.db, lock_timeout=30).tasks()]

    def cli_tasks(self) -> list[dict[str, Any]]:
        """``labtasker queue ls --json``."""
        return list(json.loads(self.ok("queue", "ls", "--json")))

    def task(self, task_id: int) -> dict[str, Any]:
        return next(t for t in self.tasks() if t["id"] == task_id)

    def records(self) -> list[dict[str, Any]]:
        """The lines the tasks appended (one per finished run)."""
        if not self.records_path.exists():
            return []
        return [json.loads(x) for x in self.records_path.read_text().splitlines() if x]

    def wait_task(
        self, task_id: int, states: Sequence[str], timeout: float = DEADLINE
    ) -> dict[str, Any]:
        """Poll ``queue ls`` until the task is in one of ``states``."""

        def reached() -> dict[str, Any] | None:
            task = self.task(task_id)
            return task if task["state"] in states else None

        got = poll(reached, f"task {task_id} in {states}", timeout)
        assert isinstance(got, dict)
        return got


def wait(check: Callable[[], object], what: str, timeout: float = DEADLINE) -> object:
    """Poll ``check`` until truthy (its value); AssertionError after ``timeout`` seconds."""
    return poll(check, what, timeout)


def finish(proc: subprocess.Popen[str], timeout: float = DEADLINE) -> tuple[int, str, str]:
    """Wait for a background command; (exit code, stdout, stderr). Kills it past the deadline."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        raise AssertionError(f"command still running after {timeout} s:\n{out}\n{err}") from None
    return proc.returncode, out, err


@pytest.fixture(scope="session")
def slurm_cluster(sshd_hosts: SshdHosts) -> Iterator[SlurmCluster]:
    """A private single-node SLURM cluster (``tests/slurm.py``) whose login node is the sshd
    host ``slurm``: ``ssh_home``'s config names it like the other hosts.

    Without SLURM installed or without root this fails under CI (CI=true) and skips elsewhere.
    """
    reason = ""
    if not slurm_installed():
        reason = "SLURM is not installed (apt-get install slurm-wlm munge)"
    elif os.geteuid() != 0:
        reason = "a private SLURM cluster needs root (slurmd starts jobs as the login user)"
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = SlurmCluster.start(sshd_hosts)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def lab(ssh_home: Path, sshd_hosts: SshdHosts, tmp_path: Path) -> Iterator[Lab]:
    """A fresh controller directory and a shared directory holding the example script."""
    with new_lab(ssh_home, sshd_hosts, tmp_path) as lab:
        yield lab


@contextlib.contextmanager
def new_lab(ssh_home: Path, sshd_hosts: SshdHosts, tmp_path: Path) -> Iterator[Lab]:
    """A lab on ``sshd_hosts`` reached with ``ssh_home``; its tasks stopped and its shared
    directory removed at the end."""
    shared = Path(tempfile.mkdtemp(prefix="lab-", dir=sshd_hosts.base))
    shared.chmod(0o777)  # every host logs in as its own user
    shutil.copy(EXAMPLE, shared / EXAMPLE.name)
    (shared / EXAMPLE.name).chmod(0o755)
    records = shared / "records.jsonl"
    records.touch()
    records.chmod(0o666)  # tasks run with umask 077 as several users, and all append here
    root = tmp_path / "controller"
    root.mkdir()
    lab = Lab(ssh_home, root, shared, sshd_hosts)
    try:
        yield lab
    finally:
        lab.stop_all()
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def faults(lab: Lab) -> Iterator[FaultLab]:
    """The lab with fault-injection helpers (``faults_lab.py``); kills what a test leaves."""
    from tests.integration.faults_lab import FaultLab  # it imports this module

    faults = FaultLab(lab)
    try:
        yield faults
    finally:
        faults.kill_leftovers()
