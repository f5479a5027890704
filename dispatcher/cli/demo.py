"""``labtasker demo``: a real dispatch of a small grid on this machine, no lab servers needed."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from dispatcher.cli.app import app


@app.command()
def demo(
    folder: Annotated[
        Path, typer.Option("--dir", help="Folder for the demo's queue, hosts.toml and logs.")
    ] = Path("labtasker-demo"),
    slots: Annotated[int, typer.Option(help="Tasks at once on this machine.")] = 4,
) -> None:
    """Queue a 3 x 3 grid of a stand-in training script and dispatch it on the `local` host."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from dispatcher.cli.dispatch import ConsoleReporter
    from dispatcher.config.hosts import load_hosts
    from dispatcher.config.paths import ensure_private_dir, logs_dir
    from dispatcher.core.models import NewTask
    from dispatcher.core.sweep import parse_grid
    from dispatcher.core.template import render
    from dispatcher.demo.run import prepare
    from dispatcher.dispatch.loop import Dispatcher, DispatchOptions
    from dispatcher.store.queue import Store

    console = Console(highlight=False, soft_wrap=True)
    db, hosts_file = prepare(folder, slots=slots)
    ensure_private_dir(db.parent)
    store = Store(db)
    template = f"{shlex.quote(sys.executable)} train.py --lr %{{lr}} --depth %{{depth}} --seed 1"
    groups = parse_grid(["lr=0.3,0.1,0.03", "depth=2,4,8"])
    added = store.add(
        [NewTask(args=g, template=template, command=render(template, g)) for g in groups]
    )
    console.print(f"Queued {len(added.ids)} tasks in {db}")
    console.print(f"[dim]$ labtasker --db {db} dispatch --hosts {hosts_file}[/]")
    reporter = ConsoleReporter(console)
    engine = Dispatcher(
        store, load_hosts(hosts_file, db), reporter, logs_dir(db), DispatchOptions()
    )
    try:
        code = asyncio.run(engine.run())
    finally:
        reporter.close()
    table = Table(title="Results", header_style="bold")
    for column in ("id", "lr", "depth", "state", "host", "loss", "accuracy"):
        table.add_column(column, justify="right")
    with store.transaction() as tx:
        tasks = tx.tasks()
    for t in tasks:
        r = t.result or {}
        table.add_row(
            str(t.id), str(t.args["lr"]), str(t.args["depth"]), str(t.state), t.host or "",
            str(r.get("loss", "")), str(r.get("accuracy", "")),
        )  # fmt: skip
    console.print(table)
    console.print(
        "Look around:\n"
        f"  labtasker --db {db} queue ls\n"
        f"  labtasker --db {db} logs 1 --hosts {hosts_file}\n"
        f"  labtasker --db {db} results"
    )
    raise typer.Exit(code)
