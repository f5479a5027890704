"""``labtasker status`` and ``labtasker logs``: what runs now, and what a task printed.

``status`` reads the queue and the dispatcher's status file (last output lines, GPU use per host,
written every few seconds while a dispatcher runs); ``--watch`` redraws it in place.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from dispatcher.cli.app import app
from dispatcher.cli.common import open_store, reported
from dispatcher.cli.dispatch import HostsOption
from dispatcher.core.models import ACTIVE_STATES, Task, TaskState
from dispatcher.core.words import resume_hint
from dispatcher.errors import DispatcherError, UsageError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from dispatcher.store.queue import Store

#: ``status`` shows the reasons of this many failed tasks, those that ended last.
SHOW_FAILED = 5
#: The shortest ``status --watch --interval`` accepted: below it the loop only burns a core.
MIN_INTERVAL = 0.1


def status_view(store: Store, *, watch: bool = False) -> tuple[RenderableType, list[Task]]:
    """The ``status`` view and the active tasks; ``watch`` adds the ETA and each host's GPU use."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from dispatcher.config.paths import dispatcher_running
    from dispatcher.dispatch.logs import read_status_file
    from dispatcher.store.suspensions import suspended_hosts
    from dispatcher.ui.views import (
        counts_line,
        eta_text,
        failures_table,
        freshness,
        gpu_table,
        running_table,
    )

    with store.transaction() as tx:
        active = tx.tasks(states=ACTIVE_STATES)
        counts = tx.counts()
        suspended = suspended_hosts(tx)
        median = tx.median_runtime() if watch else None
        waiting = tx.pending_reasons() if counts[TaskState.PENDING] else []
        failed, n_failed = tx.last_finished(TaskState.FAILED, SHOW_FAILED)
    written = read_status_file(store.path)
    running = dispatcher_running(store.path)
    parts: list[RenderableType] = []
    if active:
        lines = {t.id: written.lines[t.id] for t in active if t.id in written.lines}
        parts.append(running_table(active, last_lines=lines))
    else:
        parts.append(Text("Nothing is running.", style="dim"))
    if watch:
        line = Table.grid(padding=(0, 2))
        line.add_row(counts_line(counts), eta_text(median, counts))
        parts.append(line)
        gpus = gpu_table(written.hosts) if running else None
        if gpus is not None:
            parts.append(gpus)
    else:
        parts.append(counts_line(counts))
    for reason, n in waiting:  # why the queue does not move, as the last plan saw it
        parts.append(Text(f"{n} pending: {reason}", style="yellow"))
    if failed:  # why the last ones failed; every attempt of one: `queue show ID`
        parts.append(failures_table(failed))
        if n_failed > len(failed):
            more = f"{n_failed - len(failed)} more failed: `labtasker queue ls --state failed`"
            parts.append(Text(more, style="dim"))
    stale = freshness(written.written_at, time.time(), running=running)
    if stale is not None and active:  # the last lines shown may be old
        parts.append(stale)
    for name, view in written.hosts.items() if running else ():  # as the dispatcher sees it
        health = view.get("status")
        if isinstance(health, str) and health != "up":
            parts.append(Text(f"host {name}: {health}", style="yellow"))
    for s in suspended.values():  # persisted by the dispatcher; lifted by `hosts resume`
        at = s.suspended_at.strftime("%Y-%m-%d %H:%M:%S")
        said = f"host {s.host} {s.reason} since {at} UTC; {resume_hint(s.host)}"
        parts.append(Text(said, style="bold red"))
    return Group(*parts), active


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print running tasks as JSON.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh live until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float,
        typer.Option(help=f"Seconds between refreshes with --watch (at least {MIN_INTERVAL:g})."),
    ] = 1.0,
) -> None:
    """Show running experiments (id, host, GPUs, elapsed, args, last output) and counts by state.

    With ``--watch`` into a terminal the view is redrawn in place; into a pipe or a file, one
    plain frame is printed per interval, each under a ``-- HH:MM:SS --`` line.
    """
    from rich.console import Console

    if not (math.isfinite(interval) and interval >= MIN_INTERVAL):
        with reported():
            raise UsageError(f"--interval must be at least {MIN_INTERVAL:g} s (got {interval:g})")
    store = open_store(ctx)
    console = Console(highlight=False)
    if as_json:
        with store.transaction() as tx:
            active = tx.tasks(states=ACTIVE_STATES)
        sys.stdout.write(json.dumps([t.to_json() for t in active], indent=2) + "\n")
        return
    if not watch:
        view, _ = status_view(store)
        console.print(view)
        return
    if not console.is_terminal:
        _watch_plain(store, console, interval)
        return
    from rich.live import Live

    with Live(console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                view, _ = status_view(store, watch=True)
                live.update(view, refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


def _watch_plain(store: Store, console: Console, interval: float) -> None:
    """``status --watch`` into a pipe or a file: one frame per interval, flushed, until Ctrl-C."""
    try:
        while True:
            view, _ = status_view(store, watch=True)
            console.print(f"-- {time.strftime('%H:%M:%S')} --")
            console.print(view)
            sys.stdout.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@app.command()
def logs(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(help="Task id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output.")
    ] = False,
    hosts: HostsOption = Path("hosts.toml"),
) -> None:
    """Print a task's output: live from its host while it runs, from the local copy once done."""
    from dispatcher.config.paths import logs_dir
    from dispatcher.dispatch.logs import log_path

    store = open_store(ctx)
    with store.transaction() as tx:
        task = tx.get(task_id)
    if follow and task.state in _NOT_STARTED:
        task = _wait_for_start(store, task_id)
        if task.state not in ACTIVE_STATES:
            _ended_while_waiting(store, task)
            return
    if task.run_id:
        local = log_path(logs_dir(store.path), task.run_id)
        if local.exists() and task.state not in ACTIVE_STATES:
            sys.stdout.buffer.write(local.read_bytes())
            return
        if task.state not in ACTIVE_STATES and task.exit_code is not None:
            return  # its exit was recorded and no copy kept: the run printed nothing
    if task.state not in ACTIVE_STATES or not task.run_id or not task.host:
        raise UsageError(f"task {task_id} has no output yet (state {task.state})")
    import asyncio

    from dispatcher.config.hosts import load_hosts
    from dispatcher.remote.follow import stream_log

    config = load_hosts(hosts, store.path)
    spec = next((h for h in config.hosts if h.name == task.host), None)
    if spec is None:
        raise UsageError(f"task {task_id} runs on {task.host}, which {hosts} does not list")
    out = _Counting(sys.stdout.buffer)
    try:
        asyncio.run(stream_log(spec, task.run_id, follow=follow, out=out))
    except DispatcherError:
        # The run may have ended meanwhile and its directory been tidied away after the
        # dispatcher copied its log: finish from that copy.
        local = log_path(logs_dir(store.path), task.run_id)
        with store.transaction() as tx:
            now = tx.get(task_id)
        if now.state in ACTIVE_STATES or now.run_id != task.run_id:
            raise
        if local.exists():
            sys.stdout.buffer.write(local.read_bytes()[out.written :])
        elif now.exit_code is None:  # lost, say: nothing was copied
            raise


#: States in which ``logs --follow`` waits: no run on a host to read yet.
_NOT_STARTED = frozenset({TaskState.PENDING, TaskState.LAUNCHING})


def _wait_for_start(store: Store, task_id: int, poll: float = 0.5) -> Task:
    """Poll the queue until the task leaves pending and launching; Ctrl-C ends the wait (130)."""
    sys.stderr.write(f"waiting for task {task_id} to start...\n")
    sys.stderr.flush()
    try:
        while True:
            with store.transaction() as tx:
                task = tx.get(task_id)
            if task.state not in _NOT_STARTED:
                return task
            time.sleep(poll)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _ended_while_waiting(store: Store, task: Task) -> None:
    """The task ended before ``logs --follow`` saw it run: its output, or a line saying why there
    is none (exit 0 if it ran and printed nothing, 1 if it never ran or its output is gone)."""
    from dispatcher.config.paths import logs_dir
    from dispatcher.dispatch.logs import log_path

    if task.run_id:
        local = log_path(logs_dir(store.path), task.run_id)
        if local.exists():
            sys.stdout.buffer.write(local.read_bytes())
            return
        if task.exit_code is not None:
            sys.stderr.write(
                f"task {task.id} {task.state} (exit {task.exit_code}) with no output\n"
            )
            return
        with reported():
            raise DispatcherError(
                f"task {task.id} is {task.state} and no copy of its output was kept"
            )
    with reported():
        reason = f" ({task.reason})" if task.reason else ""
        raise DispatcherError(f"task {task.id} was {task.state} before it started{reason}")


class _Counting:
    """A binary stream wrapper that counts what was written through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()
