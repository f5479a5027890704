"""``labtasker queue show ID`` (also ``labtasker show ID``): one task, with its dependencies
and every attempt. Parse, read the store, print (``ui.task_view``)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from dispatcher.cli.app import app
from dispatcher.cli.common import open_store, reported
from dispatcher.cli.queue import queue_app
from dispatcher.core.models import TaskState


def show(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(help="Task id.", show_default=False)],
    as_json: Annotated[
        bool, typer.Option("--json", help="The `queue ls --json` object plus its attempts.")
    ] = False,
) -> None:
    """One task: command, args, settings, dependencies, and every attempt (host, GPUs, run id,
    start, end, exit code or signal, reason)."""
    with reported():
        from dispatcher.ui.task_view import task_json, task_view

        with open_store(ctx).transaction() as tx:
            task = tx.get(task_id)
            finished = tx.attempts(task_id)
            named = [*task.after, *task.after_any, *task.after_failed]
            deps: dict[int, TaskState] = {}
            if named:
                deps = {t.id: t.state for t in tx.tasks(ids=named)}
        if as_json:
            sys.stdout.write(json.dumps(task_json(task, finished), ensure_ascii=False) + "\n")
            return
        from rich.console import Console

        Console(highlight=False).print(task_view(task, finished, deps))


queue_app.command("show")(show)
app.command("show", help="One task and every attempt (the same as `labtasker queue show`).")(show)
