"""``labtasker status`` and ``labtasker logs``: what runs now, and what a task printed."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dispatcher.cli import app, db_option
from dispatcher.cli.dispatch import HostsOption
from dispatcher.errors import UsageError
from dispatcher.models import ACTIVE_STATES, Task

if TYPE_CHECKING:
    from rich.console import RenderableType

    from dispatcher.store import Store


def _status_view(store: Store) -> tuple[RenderableType, list[Task]]:
    from rich.console import Group
    from rich.text import Text

    from dispatcher.status import counts_line, running_table

    with store.transaction() as tx:
        active = tx.tasks(states=ACTIVE_STATES)
        counts = tx.counts()
    parts: list[RenderableType] = []
    if active:
        parts.append(running_table(active, last_lines=last_lines(active)))
    else:
        parts.append(Text("Nothing is running.", style="dim"))
    parts.append(counts_line(counts))
    return Group(*parts), active


def last_lines(tasks: list[Task]) -> dict[int, str]:
    """The last output line of each task as the dispatcher last recorded it."""
    return {t.id: t.last_line for t in tasks if getattr(t, "last_line", None)}  # type: ignore[misc]


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print running tasks as JSON.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh live until Ctrl-C.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 1.0,
) -> None:
    """Show running experiments (id, host, GPUs, elapsed, args, last output) and counts by state."""
    from rich.console import Console

    from dispatcher.store import Store

    store = Store.open_default(db_option(ctx))
    console = Console(highlight=False)
    if as_json:
        with store.transaction() as tx:
            active = tx.tasks(states=ACTIVE_STATES)
        sys.stdout.write(json.dumps([t.to_json() for t in active], indent=2) + "\n")
        return
    if not watch:
        view, _ = _status_view(store)
        console.print(view)
        return
    from rich.live import Live

    with Live(console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                view, _ = _status_view(store)
                live.update(view, refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


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
    from dispatcher.collect import log_path
    from dispatcher.paths import logs_dir
    from dispatcher.store import Store

    store = Store.open_default(db_option(ctx))
    with store.transaction() as tx:
        task = tx.get(task_id)
    if task.run_id:
        local = log_path(logs_dir(store.path), task.run_id)
        if local.exists() and task.state not in ACTIVE_STATES:
            sys.stdout.buffer.write(local.read_bytes())
            return
    if task.state not in ACTIVE_STATES or not task.run_id or not task.host:
        raise UsageError(f"task {task_id} has no output yet (state {task.state})")
    from dispatcher.hosts import load_hosts
    from dispatcher.remote.follow import stream_log

    config = load_hosts(hosts)
    spec = next((h for h in config.hosts if h.name == task.host), None)
    if spec is None:
        raise UsageError(f"task {task_id} runs on {task.host}, which {hosts} does not list")
    asyncio.run(stream_log(spec, task.run_id, follow=follow, out=sys.stdout.buffer))
