"""A simulated lab for fast tests of the dispatch loop: several ``ssh = false`` hosts on this
machine, each with its own state dir and slots, run by the real helper through the local transport.

Tasks run ``journal.sh``, which appends one line when it starts and one when it ends to a shared
journal (``O_APPEND``, one short write each), so the tests judge the loop from the tasks' own
records: how often each task started, on which host, and how many ran at once on each host.
``LocalLab.dispatch`` runs the real ``Dispatcher`` in this process; ``LocalLab.dispatch_cli``
starts ``python -m dispatcher dispatch`` (for a controller the test SIGKILLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from dispatcher.cli import _register, app
from dispatcher.config.hosts import load_hosts
from dispatcher.config.paths import logs_dir
from dispatcher.core.models import Task
from dispatcher.dispatch.loop import Dispatcher, DispatchOptions, Snapshot
from dispatcher.store.queue import Store
from dispatcher.store.txn import Attempt

REPO = Path(__file__).resolve().parents[1]
#: Generous: the suite runs on loaded 2-core machines; passing runs finish far sooner.
DEADLINE = 60.0

#: The task: ``journal.sh JOURNAL SLEEP EXIT SUCCEED_FROM GATE``. Records its start, waits for
#: GATE to exist (``-``: no gate; at most a minute), sleeps, then exits EXIT, or 0 from attempt
#: SUCCEED_FROM on (0: never), and records its end just before exiting.
JOURNAL_SH = r"""
journal=$1 pause=$2 code=$3 from=$4 gate=$5
attempt=${LABTASKER_ATTEMPT:-0}
echo "start $LABTASKER_TASK_ID $attempt $LAB_HOST $$" >> "$journal"
if [ "$gate" != - ]; then
    n=0
    while [ ! -e "$gate" ] && [ $n -lt 3000 ]; do sleep 0.02; n=$((n + 1)); done
fi
sleep "$pause"
if [ "$from" -gt 0 ] && [ "$attempt" -ge "$from" ]; then code=0; fi
echo "end $LABTASKER_TASK_ID $attempt $LAB_HOST $$ $code" >> "$journal"
exit "$code"
"""

_register()


@dataclass(frozen=True)
class Entry:
    """One journal line: a task's process started or ended."""

    event: str  # "start" or "end"
    task: int
    attempt: int
    host: str
    pid: int
    code: int | None = None  # the exit code the task chose ("end" only)


class ListReporter:
    """A ``Reporter`` that keeps the loop's log lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str, *, style: str = "") -> None:
        self.lines.append(message)

    def update(self, snapshot: Snapshot) -> None:
        pass


@dataclass
class LocalLab:
    """One test's lab; see the module docstring. ``hosts``: name -> slots."""

    root: Path
    hosts: dict[str, int]
    settings: dict[str, object] = field(default_factory=dict)  # [defaults] keys
    started: list[subprocess.Popen[str]] = field(default_factory=list)
    loops: list[tuple[Dispatcher, asyncio.Task[int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.work = self.root / "work"
        self.work.mkdir(parents=True)
        self.script = self.root / "journal.sh"
        self.script.write_text(JOURNAL_SH)
        self.journal_path = self.root / "journal.txt"
        self.journal_path.touch()
        self.db = self.root / "queue.duckdb"
        self.hosts_path = self.root / "hosts.toml"
        self.write_hosts()

    def write_hosts(self, per_host: dict[str, dict[str, object]] | None = None) -> None:
        """hosts.toml: every host local, CPU-only, with its slots and a state dir of its own."""
        settings: dict[str, object] = {"gpus": 0, "kill_grace": 1, "workdir": str(self.work)}
        settings.update(self.settings)
        lines = ["[defaults]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
        for name, slots in self.hosts.items():
            state = self.root / "state" / name
            lines += [f"\n[hosts.{name}]", "ssh = false", f"slots = {slots}"]
            lines += [f"state_dir = {json.dumps(str(state))}", f'env = {{ LAB_HOST = "{name}" }}']
            lines += [f"{k} = {json.dumps(v)}" for k, v in (per_host or {}).get(name, {}).items()]
        self.hosts_path.write_text("\n".join(lines) + "\n")

    # -- the queue -------------------------------------------------------------------------------

    def add(
        self,
        count: int,
        *,
        sleep: float = 0.0,
        exit_code: int = 0,
        succeed_from: int = 0,
        gate: Path | None = None,
        options: tuple[str, ...] = (),
    ) -> list[int]:
        """``queue add`` (the real CLI, in this process) of ``count`` journal tasks; their ids."""
        cmd = (
            f"sh {self.script} {self.journal_path} {sleep} {exit_code} {succeed_from} "
            f"{gate or '-'} %{{i}}"  # the point (ignored) makes each command unique
        )
        grid = ",".join(str(i) for i in range(count))
        argv = ["--db", str(self.db), "queue", "add", "--json", "--cmd", cmd, "--grid", f"i={grid}"]
        result = CliRunner().invoke(app, [*argv, "--gpus", "0", *options])
        assert result.exit_code == 0, (result.stdout, result.stderr)
        ids = json.loads(result.stdout)
        return list(ids["ids"] if isinstance(ids, dict) else ids)

    def tasks(self) -> dict[int, Task]:
        return {t.id: t for t in Store(self.db, lock_timeout=30).tasks()}

    def attempts(self, task_id: int) -> list[Attempt]:
        """The task's finished attempts, oldest first."""
        with Store(self.db, lock_timeout=30).transaction() as tx:
            return tx.attempts(task_id)

    # -- dispatch --------------------------------------------------------------------------------

    def dispatcher(self, reporter: ListReporter | None = None) -> Dispatcher:
        """The real loop over this lab's hosts and queue."""
        store = Store(self.db, lock_timeout=30)
        options = DispatchOptions(idle_tick=0.5)
        config = load_hosts(self.hosts_path)
        return Dispatcher(store, config, reporter or ListReporter(), logs_dir(self.db), options)

    def start(self, dispatcher: Dispatcher | None = None) -> asyncio.Task[int]:
        """Run a dispatcher (default: a new one) in the background of this event loop; stopped
        at teardown if the test leaves it running."""
        dispatcher = dispatcher or self.dispatcher()
        task = asyncio.ensure_future(asyncio.wait_for(dispatcher.run(), DEADLINE))
        self.loops.append((dispatcher, task))
        return task

    async def dispatch(self) -> tuple[int, list[str]]:
        """Dispatch until the queue drains; (exit code, the loop's log lines)."""
        reporter = ListReporter()
        code = await self.start(self.dispatcher(reporter))
        return code, reporter.lines

    def dispatch_cli(self) -> subprocess.Popen[str]:
        """Start ``labtasker dispatch`` in the background (reaped or killed at teardown)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.update(LABTASKER_LOCK_TIMEOUT="30", COLUMNS="200")
        argv = [sys.executable, "-m", "dispatcher", "--db", str(self.db), "dispatch"]
        proc = subprocess.Popen(
            [*argv, "--hosts", str(self.hosts_path)], cwd=self.root, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.started.append(proc)
        return proc

    # -- the tasks' own records ------------------------------------------------------------------

    def journal(self) -> list[Entry]:
        """Every start and end the tasks recorded, in the order they wrote them."""
        entries = []
        for line in self.journal_path.read_text().splitlines():
            word, *rest = line.split()
            code = int(rest[4]) if word == "end" else None
            entries.append(Entry(word, int(rest[0]), int(rest[1]), rest[2], int(rest[3]), code))
        return entries

    def starts(self) -> list[Entry]:
        return [e for e in self.journal() if e.event == "start"]

    def start_counts(self) -> Counter[int]:
        """How many processes each task id started."""
        return Counter(e.task for e in self.starts())

    def most_at_once(self, ids: set[int] | None = None) -> dict[str, int]:
        """Per host, and over all hosts as ``"*"``, the most tasks (of ``ids``, default all) that
        had started and not yet ended at any point of the journal."""
        now: Counter[str] = Counter()
        most: Counter[str] = Counter()
        for e in self.journal():
            if ids is not None and e.task not in ids:
                continue
            for key in (e.host, "*"):
                now[key] += 1 if e.event == "start" else -1
                most[key] = max(most[key], now[key])
        return dict(most)

    def running_pids(self) -> list[int]:
        """Task processes of this lab that still exist (not zombies)."""
        return [e.pid for e in self.starts() if alive(e.pid)]

    async def close(self) -> None:
        """Stop what a failed test left behind: dispatchers, then every task's process group."""
        for dispatcher, task in self.loops:
            dispatcher.request_stop()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 15)
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for e in self.starts():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(e.pid, signal.SIGKILL)  # tasks lead their own session


async def until(
    check: Callable[[], object], what: str, running: asyncio.Task[Any] | None = None
) -> None:
    """Poll ``check`` until truthy without blocking the loop; AssertionError after DEADLINE s.
    ``running``: the dispatch task, whose early end (or error) fails the wait at once."""
    end = time.monotonic() + DEADLINE
    while not check():
        if running is not None and running.done():
            raise AssertionError(f"{what}: dispatch ended first ({running.result()!r})")
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not true within {DEADLINE:g} s")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_ran_once(lab: LocalLab, ids: list[int]) -> dict[int, Any]:
    """Every task in ``ids`` succeeded after exactly one process start, that run's record."""
    tasks = lab.tasks()
    counts = lab.start_counts()
    for i in ids:
        assert tasks[i].state == "succeeded", tasks[i]
        assert counts[i] == 1, (i, [e for e in lab.journal() if e.task == i])
    return {i: tasks[i] for i in ids}
