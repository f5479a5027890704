"""``labtasker dispatch``: run the queue on the hosts of hosts.toml, with a live progress view."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dispatcher.cli import app, db_option
from dispatcher.models import TaskState

if TYPE_CHECKING:
    from rich.console import Console

    from dispatcher.engine import Snapshot

HostsOption = Annotated[
    Path,
    typer.Option("--hosts", "-H", help="Hosts file (see docs/hosts.md).", show_default=True),
]


class ConsoleReporter:
    """Progress for a terminal (a live bar and host list) or plain lines when piped."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live

        self.console = console
        self.live: Live | None = None
        if console.is_terminal:
            self.live = Live(console=console, refresh_per_second=4, transient=False)
            self.live.start()

    def log(self, message: str, *, style: str = "") -> None:
        from rich.markup import escape

        text = escape(message)
        self.console.print(f"[{style}]{text}[/]" if style else text, highlight=False)

    def update(self, snapshot: Snapshot) -> None:
        if self.live is None:
            return
        from dispatcher.status import progress_panel

        self.live.update(progress_panel(snapshot))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


@app.command()
def dispatch(
    ctx: typer.Context,
    hosts: HostsOption = Path("hosts.toml"),
    forever: Annotated[
        bool, typer.Option("--forever", help="Keep waiting for new tasks instead of exiting.")
    ] = False,
    accept_new_host_keys: Annotated[
        bool,
        typer.Option(
            "--accept-new-host-keys",
            help="Record the key of a host never seen before (like OpenSSH accept-new). "
            "A changed key is always refused.",
        ),
    ] = False,
) -> None:
    """Run pending tasks on the hosts until the queue drains (Ctrl-C leaves running tasks running).

    Exit status: 0 when every task that finished succeeded, 1 when some failed, were lost or
    cannot be placed, 2 on a usage or configuration error.
    """
    from rich.console import Console

    from dispatcher.engine import Dispatcher, DispatchOptions
    from dispatcher.hosts import load_hosts
    from dispatcher.paths import logs_dir
    from dispatcher.store import Store

    config = load_hosts(hosts)
    store = Store.open_default(db_option(ctx))
    console = Console(highlight=False, soft_wrap=True)
    reporter = ConsoleReporter(console)
    engine = Dispatcher(
        store,
        config,
        reporter,
        logs_dir(store.path),
        DispatchOptions(forever=forever, accept_new_host_keys=accept_new_host_keys),
    )
    interrupted = False

    async def main() -> int:
        nonlocal interrupted
        loop = asyncio.get_running_loop()

        def stop() -> None:
            nonlocal interrupted
            interrupted = True
            engine.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        return await engine.run()

    try:
        code = asyncio.run(main())
    finally:
        reporter.close()
    running = len(engine.active)
    if interrupted:
        console.print(
            f"[yellow]Stopped launching. {running} task(s) keep running on their hosts; "
            "run `labtasker dispatch` again to collect them.[/]"
        )
        raise typer.Exit(130)
    snap = engine.snapshot()
    console.print(
        f"Done: {snap.succeeded} succeeded, {snap.failed} failed, "
        f"{snap.counts.get(TaskState.PENDING, 0)} pending."
    )
    for task_id, reason in sorted(engine.unplaceable.items())[:20]:
        label = f"task {task_id}" if task_id else "pending tasks"
        console.print(f"[red]{label} cannot be placed:[/] {reason}", highlight=False)
    raise typer.Exit(code)
