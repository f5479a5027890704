"""``labtasker dispatch``: run the queue on the hosts of hosts.toml, with a live progress view."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dispatcher.cli.app import app
from dispatcher.core.models import TaskState
from dispatcher.core.words import id_ranges, resume_hint

if TYPE_CHECKING:
    from rich.console import Console

    from dispatcher.dispatch.loop import Dispatcher, Snapshot

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
        if not self.console.is_terminal:  # plain lines to a file or pipe: rich costs ~0.2 ms each
            self.console.file.write(message + "\n")
            return
        from rich.markup import escape

        text = escape(message)
        self.console.print(f"[{style}]{text}[/]" if style else text, highlight=False)

    def update(self, snapshot: Snapshot) -> None:
        if self.live is None:
            return
        from dispatcher.ui.views import progress_panel

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
    import asyncio  # here, not at the top: `labtasker --help` need not pay for it
    import signal

    from rich.console import Console

    from dispatcher.cli.common import open_store
    from dispatcher.config.hosts import load_hosts
    from dispatcher.config.paths import logs_dir
    from dispatcher.dispatch.loop import Dispatcher, DispatchOptions

    console = Console(highlight=False, soft_wrap=True)
    if forever:  # started before the first `queue add`: wait for the queue, making nothing
        wait_for_queue(ctx, hosts, console)
    store = open_store(ctx)
    config = load_hosts(hosts, store.path)
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
        one = running == 1
        what = "1 task keeps running on its host" if one else f"{running} tasks keep running"
        what += "" if one else " on their hosts"
        console.print(
            f"[yellow]Stopped launching. {what}; run `labtasker dispatch` again to collect"
            f" {'it' if one else 'them'}.[/]"
        )
        raise typer.Exit(130)
    snap = engine.snapshot()
    console.print(
        f"Done: {snap.succeeded} succeeded, {snap.failed} failed, {snap.cancelled} cancelled, "
        f"{snap.counts.get(TaskState.PENDING, 0)} pending."
    )
    if engine.unplaceable or engine.command_faults:
        report_problems(engine)
    raise typer.Exit(code)


def wait_for_queue(ctx: typer.Context, hosts: Path, console: Console) -> None:
    """``dispatch --forever`` started before the first ``queue add``: wait for the queue file
    to appear (creating nothing); Ctrl-C ends the wait with exit 130. A bad hosts file is
    said before any wait."""
    import time

    from dispatcher.cli.app import db_option
    from dispatcher.config.hosts import load_hosts
    from dispatcher.config.paths import locate_db

    path = locate_db(db_option(ctx))[0]
    load_hosts(hosts, path)
    if path.is_file():
        return
    try:  # from before the line: a Ctrl-C right after it still ends the wait cleanly
        console.print(f"No queue at {path} yet; waiting for `labtasker queue add` (Ctrl-C stops).")
        while not path.is_file():
            time.sleep(0.2)
    except KeyboardInterrupt:
        console.print("[yellow]Stopped waiting; nothing was started.[/]")
        raise typer.Exit(130) from None


def report_problems(engine: Dispatcher) -> None:
    """Print why pending work could not run to stderr, one ``Error:`` line per problem.

    Progress went to stdout as it happened; this summary is what a script or CI log must see,
    so it goes where ``labtasker``'s other errors go (``cli.fail``).
    """
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    faults = [fault_problem(why, ids) for why, ids in engine.command_faults.items()]
    for line in [*faults, *host_problems(engine), *task_problems(engine.unplaceable)]:
        err.print(f"[bold red]Error:[/] {escape(line)}")


def fault_problem(why: str, ids: list[int]) -> str:
    """The line for tasks that failed the same way on every host: the command's fault."""
    unique = sorted(set(ids))
    label = (
        f"task {unique[0]}" if len(unique) == 1 else f"{len(unique)} tasks ({id_ranges(unique)})"
    )
    return (
        f"{label} failed the same way on every host ({why}): the command is the problem, not the"
        f" hosts; `labtasker logs {unique[0]}` shows what it printed; fix the command, then"
        " `labtasker queue retry --failed`"
    )


def host_problems(engine: Dispatcher) -> list[str]:
    """One line per host that could take no task when dispatch ended, naming the host."""
    from dispatcher.dispatch.capacity import gpu_problem

    lines = []
    for name, hs in engine.hosts.items():
        session = hs.session
        if hs.suspended:
            lines.append(f"{name}: {hs.suspended}; {resume_hint(name)}")
        elif session.status != "up":  # not ``session.up``: dispatch has closed every session
            # The transport's message names the host and says what to do next.
            lines.append(session.error or f"{name}: never connected; run `labtasker hosts check`")
        elif session.inventory is not None:
            inv = session.inventory
            view = {"gpus": inv.gpus, "processes": inv.processes, "error": inv.error}
            problem = gpu_problem(session.spec, view)
            if problem:
                lines.append(f"{name}: {problem}")
    return lines


def task_problems(unplaceable: dict[int, str]) -> list[str]:
    """One line per distinct reason, naming the tasks it holds back and what to do about it."""
    by_reason: dict[str, list[int]] = {}
    for task_id, reason in sorted(unplaceable.items()):
        by_reason.setdefault(reason, []).append(task_id)
    lines = []
    for reason, ids in by_reason.items():
        if ids == [0]:
            lines.append(f"{reason}; see `labtasker queue ls`, then retry or remove them")
            continue
        one = len(ids) == 1
        label = f"task {ids[0]}" if one else f"{len(ids)} tasks ({id_ranges(ids)})"
        it, stays = ("it", "it stays") if one else ("them", "they stay")
        if reason.startswith(("needs ", "asks for ")):
            what = f"{stays} pending: add a host that fits, or `labtasker queue rm` {it} and add"
            hint = f"{what} {it} again with fewer --gpus"
        elif "used by" in reason:
            hint = f"{stays} pending; `labtasker dispatch --forever` waits until the GPU is free"
        else:
            hint = f"{stays} pending and {'runs' if one else 'run'} at the next `labtasker"
            hint += " dispatch` once that is fixed (`labtasker hosts check` shows when)"
        lines.append(f"{label} cannot be placed: {reason}; {hint}")
    return lines
