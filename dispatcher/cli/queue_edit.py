"""``labtasker queue update`` and ``queue rm``: edit or delete tasks that are not running.

Registered on the ``queue`` group after its other commands, so ``--help`` lists them last.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dispatcher.cli import gpu_fleet
from dispatcher.cli.common import StateOption, out, reported
from dispatcher.cli.common import open_store as _store
from dispatcher.cli.common import states as _states
from dispatcher.cli.queue import IdsArgument, queue_app
from dispatcher.cli.snapshot import collect_snapshots
from dispatcher.core.words import ids_text, plural
from dispatcher.errors import UsageError


@queue_app.command("update")
def update(
    ctx: typer.Context,
    ids: Annotated[list[int], typer.Argument(help="Task ids (pending tasks only).")],
    priority: Annotated[int | None, typer.Option(help="New priority.")] = None,
    args_json: Annotated[
        str | None, typer.Option("--args", help="JSON object merged into each task's args.")
    ] = None,
    cmd: Annotated[str | None, typer.Option("--cmd", help="New command template.")] = None,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    gpu_memory: Annotated[str | None, typer.Option(help=gpu_fleet.UPDATE_HELP)] = None,
    gpu_type: Annotated[str | None, typer.Option(help=gpu_fleet.UPDATE_HELP)] = None,
    min_gpu_memory: Annotated[str | None, typer.Option(help=gpu_fleet.UPDATE_HELP)] = None,
) -> None:
    """Edit pending tasks; the command is rendered again from the (new) template and args."""
    with reported():
        from dispatcher.core.sweep import parse_args_json

        args = None if args_json is None else parse_args_json(args_json)
        needs = gpu_fleet.update_needs(gpu_memory, gpu_type, min_gpu_memory)
        if priority is None and args is None and cmd is None and name is None and not needs:
            raise UsageError(
                "nothing to change: give --priority, --args, --cmd, --name, --gpu-memory,"
                " --gpu-type or --min-gpu-memory"
            )
        changed = _store(ctx).update(
            ids, priority=priority, args=args, template=cmd, name=name, gpu_needs=needs
        )
        out(f"Updated {plural(len(changed), 'task')} ({ids_text(changed)}).")


@queue_app.command("rm")
def rm(ctx: typer.Context, ids: IdsArgument = None, state: StateOption = None) -> None:
    """Delete tasks (and their attempt history); launching/running tasks must be cancelled first."""
    with reported():
        if not ids and not state:
            raise UsageError("name the tasks to remove: task ids or --state")
        store = _store(ctx)
        removed = store.remove(ids or None, states=_states(state))
        if removed:
            out(f"Removed {plural(len(removed), 'task')} ({ids_text(removed)}).")
        else:
            out("No tasks to remove.")
        collected = collect_snapshots(store)
        if collected:
            out(collected)
