"""Fault-injection helpers: a task that records every start, exactly-once checks, and faults.

``FaultLab`` wraps the ``lab`` fixture: its tasks run ``starts.py``, which appends one JSON line
per process start to a shared file before doing anything else, so a duplicate launch can never
hide. ``dispatch_killed`` SIGKILLs a dispatcher; ``partition`` drops one host's traffic with a
private nft table (removed on exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.store.queue import Store
from dispatcher.store.txn import Attempt
from tests.integration.conftest import DEADLINE, Lab, finish, wait
from tests.sshd import SshdHost

#: The task: records its start, sleeps, then exits as told (by its attempt number if asked).
STARTS_SCRIPT = r"""
import json, os, sys, time
task = os.environ.get("LABTASKER_TASK_ID")
attempt = int(os.environ.get("LABTASKER_ATTEMPT") or 0)
line = {"task": int(task), "run": os.environ.get("LABTASKER_RUN_ID"), "attempt": attempt,
        "host": os.environ.get("EXPERIMENT_HOST"), "pid": os.getpid(), "pgid": os.getpgid(0)}
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
os.write(fd, (json.dumps(line) + "\n").encode())
os.close(fd)
print("started", task, flush=True)
mode = sys.argv[5]
if mode == "ignore-term":
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
sleeps = [float(x) for x in sys.argv[2].split("/")]
time.sleep(sleeps[min(attempt, len(sleeps)) - 1])
if mode == "sigkill":
    os.kill(os.getpid(), 9)
code = int(sys.argv[3])
succeed_from = int(sys.argv[4])
if succeed_from and attempt >= succeed_from:
    code = 0
if code == 0:
    with open(os.environ["LABTASKER_RESULT"], "w") as f:
        json.dump({"task": int(task), "run": line["run"]}, f)
print("finished", task, code, flush=True)
sys.exit(code)
"""


class FaultLab:
    """The ``lab`` of one fault test, with launch counting; see the module docstring."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.script = lab.shared / "starts.py"
        self.script.write_text(STARTS_SCRIPT)
        self.script.chmod(0o755)
        self.starts_path = lab.shared / "starts.jsonl"
        self.starts_path.touch()
        self.starts_path.chmod(0o666)  # tasks of several users append here

    def hosts_toml(
        self, *names: str, per_host: dict[str, dict[str, object]] | None = None, **defaults: object
    ) -> Path:
        """A hosts.toml for ``names`` with short fault timings (``defaults`` override them;
        ``per_host`` adds keys to one host's table)."""
        settings: dict[str, object] = {
            "keepalive_interval": 1,
            "keepalive_count_max": 3,
            "connect_timeout": 3,
            "lost_after": 30,
            "kill_grace": 1,
        }
        settings.update(defaults)
        lines = [f'[defaults]\nworkdir = "{self.lab.shared}"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        for name in names:
            lines.append(f'\n[hosts.{name}]\nenv = {{ EXPERIMENT_HOST = "{name}" }}')
            if name == "cpu":
                lines.append("slots = 2")
            lines += [f"{k} = {json.dumps(v)}" for k, v in (per_host or {}).get(name, {}).items()]
        return self.lab.write_hosts("\n".join(lines) + "\n")

    def add(
        self,
        count: int,
        *,
        sleep: float | str = 0.5,
        exit_code: int = 0,
        succeed_from: int = 0,
        mode: str = "plain",
        options: tuple[str, ...] = (),
    ) -> list[int]:
        """Queue ``count`` tasks running ``starts.py``; their ids.

        The task sleeps ``sleep`` s ("30/0.5": 30 s on attempt 1, 0.5 s later), then exits
        ``exit_code``, or 0 from attempt ``succeed_from`` on; ``mode`` "sigkill" makes it kill
        itself, "ignore-term" makes it ignore SIGTERM.
        """
        cmd = (
            f"python3 {self.script} {self.starts_path} {sleep} {exit_code} {succeed_from} "
            f"{mode} %{{i}}"  # the point (ignored by the script) makes each command unique
        )
        grid = ",".join(str(i) for i in range(count))
        out = self.lab.ok("queue", "add", "--json", "--cmd", cmd, "--grid", f"i={grid}", *options)
        ids = json.loads(out)
        return list(ids["ids"] if isinstance(ids, dict) else ids)

    def starts(self) -> list[dict[str, Any]]:
        """One record per process start of any task, in the order they started."""
        text = self.starts_path.read_text()
        return [json.loads(x) for x in text.splitlines() if x]

    def start_counts(self) -> Counter[int]:
        """How many processes each task id started."""
        return Counter(s["task"] for s in self.starts())

    def losses(self, task_id: int) -> int:
        """How many times the task was lost (not in ``queue ls --json``)."""
        return Store(self.lab.db, lock_timeout=30).get(task_id).losses

    def attempts(self, task_id: int) -> list[Attempt]:
        """The task's finished attempts, oldest first."""
        with Store(self.lab.db, lock_timeout=30).transaction() as tx:
            return tx.attempts(task_id)

    def states(self) -> dict[int, str]:
        return {t["id"]: t["state"] for t in self.lab.tasks()}

    def count_in(self, *states: str) -> int:
        return sum(1 for s in self.states().values() if s in states)

    def assert_exactly_once(self, ids: list[int]) -> list[dict[str, Any]]:
        """Every task succeeded once: one process start, and the result of that very run."""
        tasks = {t["id"]: t for t in self.lab.tasks()}
        counts = self.start_counts()
        runs = {s["task"]: s["run"] for s in self.starts()}
        for i in ids:
            task = tasks[i]
            assert task["state"] == "succeeded", task
            assert counts[i] == 1, (i, counts[i], [s for s in self.starts() if s["task"] == i])
            assert task["result"] == {"task": i, "run": task["run_id"]}, task
            assert runs[i] == task["run_id"], (runs[i], task)
            assert task["exit_code"] == 0 and task["finished_at"], task
        return [tasks[i] for i in ids]

    def dispatch(
        self, hosts: Path, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start ``labtasker dispatch`` in the background (``env`` added to its environment)."""
        proc = subprocess.Popen(
            self.lab.argv("dispatch", "--hosts", str(hosts), *args),
            cwd=self.lab.root,
            env={**self.lab.env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lab.started.append(proc)
        return proc

    def run_dispatch(
        self, hosts: Path, *args: str, env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """Run ``labtasker dispatch`` to its end; (exit code, stdout, stderr)."""
        return finish(self.dispatch(hosts, *args, env=env))

    def kill_leftovers(self) -> None:
        """Kill the process groups of every task that started (a test's orphans end here)."""
        for start in self.starts():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(start["pgid"], signal.SIGKILL)

    def wait(self, check: Callable[[], object], what: str, timeout: float = DEADLINE) -> object:
        return wait(check, what, timeout)


def kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a dispatcher and reap it (no cleanup of any kind runs in it)."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def connected(proc: subprocess.Popen[str], host: SshdHost) -> bool:
    """True while ``proc`` holds an established TCP connection to ``host``'s sshd."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", "dst", f"{host.address}:{host.port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return f"pid={proc.pid}," in out


# -- network partitions --------------------------------------------------------------------------


def nft_usable() -> bool:
    """True when this process may create nft tables (root with nftables installed)."""
    return os.geteuid() == 0 and shutil.which("nft") is not None


@contextlib.contextmanager
def partition(host: SshdHost) -> Iterator[None]:
    """Drop every packet to and from ``host``'s sshd port until the block ends.

    A private nft table (``labtasker_test_<random>``), deleted on exit: no other rule is touched.
    """
    if not nft_usable():
        pytest.skip("network partitions need root and nftables (apt-get install nftables)")
    table = f"labtasker_test_{secrets.token_hex(4)}"
    rules = (
        f"table ip {table} {{\n"
        f"  chain out {{ type filter hook output priority -10; policy accept;\n"
        f"    ip daddr {host.address} tcp dport {host.port} drop\n"
        f"    ip saddr {host.address} tcp sport {host.port} drop\n"
        f"  }}\n"
        f"}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], check=True)
