"""``labtasker queue ...``: add, ls, cancel, retry (update and rm: ``queue_edit.py``). Parse, call
the store, print.

Command bodies import the store (and so duckdb) lazily, keeping ``labtasker --help`` fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dispatcher.cli import gpu_fleet
from dispatcher.cli.add_notes import dry_run as _dry_run
from dispatcher.cli.add_notes import duplicates_note, outputs_note
from dispatcher.cli.add_notes import repeated_note as _repeated_note
from dispatcher.cli.app import app
from dispatcher.cli.common import AddCommand, StateOption, note, out, reported
from dispatcher.cli.common import open_store as _store
from dispatcher.cli.common import states as _states
from dispatcher.cli.snapshot import AddHostsOption, add_snapshotted
from dispatcher.core.models import TaskState
from dispatcher.core.words import EMPTY_QUEUE, id_ranges, ids_text, plural
from dispatcher.errors import SweepError, UsageError

if TYPE_CHECKING:
    from dispatcher.core.batch import TaskBatch
    from dispatcher.store.queue import Store

queue_app = typer.Typer(
    name="queue",
    help="Add, list, cancel, retry, update and remove tasks.",
    no_args_is_help=True,
)
app.add_typer(queue_app, name="queue")

IdsArgument = Annotated[list[int] | None, typer.Argument(help="Task ids.", show_default=False)]
#: Rows the ``ls`` table shows unless --limit says otherwise.
LS_DEFAULT_LIMIT = 200
_JSON_PAGE = 10_000


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise SweepError(f"cannot read {path}: {why}") from None


def build_batch(
    *,
    cmd: str | None,
    words: Sequence[str],
    args_json: Sequence[str],
    grid: Sequence[str],
    file: Path | None,
    name: str | None,
    priority: int | None,
    max_attempts: int | None,
    timeout: float | str | None,
    gpus: int | None,
    after: Sequence[int],
    after_any: Sequence[int] = (),
    after_failed: Sequence[int] = (),
    random: Sequence[str] = (),
    samples: int | None = None,
    seed: int | None = None,
    max_running: int | None = None,
    outputs: Sequence[str] = (),
    gpu_needs: tuple[str | None, str | None, str | None] = (None, None, None),
) -> TaskBatch:
    """Parse ``queue add`` options and files; ``core.batch.assemble`` builds the batch."""
    from dispatcher.core import sampling
    from dispatcher.core.batch import (
        assemble,  # not dispatcher.store.queue: --dry-run needs no duckdb
    )
    from dispatcher.core.sweep import (
        grid_from_items,
        parse_args_json,
        parse_jsonl,
    )
    from dispatcher.core.sweep_file import parse_sweep_toml
    from dispatcher.core.template import join_words

    if cmd is not None and words:
        raise UsageError("give the command once: either --cmd TEXT or words after --")
    if not random and (samples is not None or seed is not None):
        raise UsageError("--samples and --seed go with --random KEY=KIND:A,B")
    sweep, rows = None, None
    if file is not None:
        text = _read(file)
        suffix = file.suffix.lower()
        if suffix == ".toml":
            sweep = parse_sweep_toml(text, source=str(file))
        elif suffix in (".jsonl", ".json"):
            rows = parse_jsonl(text, source=str(file))
        else:
            raise SweepError(
                f"{file}: unknown file type; use .jsonl/.json (one object a line) or .toml"
            )
    return assemble(
        cmd if cmd is not None else (join_words(words) if words else None),
        args=[parse_args_json(a) for a in args_json] if args_json else None,
        grid=grid_from_items(grid) if grid else None,
        random=sampling.from_items(random, samples, seed or 0) if random else None,
        sweep=sweep,
        rows=rows,
        name=name,
        priority=priority,
        max_attempts=max_attempts,
        timeout=timeout,
        gpus=gpus,
        max_running=max_running,
        outputs=outputs or None,
        after=after,
        after_any=after_any,
        after_failed=after_failed,
        gpu_memory=gpu_needs[0],
        gpu_type=gpu_needs[1],
        min_gpu_memory=gpu_needs[2],
    )


@queue_app.command("add", cls=AddCommand)
def add(
    ctx: typer.Context,
    words: Annotated[
        list[str] | None,
        typer.Argument(help="The command as words, after --; %{key} placeholders stay live."),
    ] = None,
    cmd: Annotated[str | None, typer.Option("--cmd", help="The command template.")] = None,
    args_json: Annotated[
        list[str] | None,
        typer.Option("--args", help="Args as a JSON object: one task, or merged into every point."),
    ] = None,
    grid: Annotated[
        list[str] | None, typer.Option("--grid", help="KEY=V1,V2,...; several are crossed.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="A .jsonl (one object a line) or .toml sweep.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name for these tasks.")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first [default: 0].")] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Attempts per task [default: 1].")
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(help='Time before a run is killed: seconds, or like "10m", "2h", "1h30m".'),
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs each task needs.")] = None,
    gpu_memory: Annotated[str | None, typer.Option(help=gpu_fleet.MEMORY_HELP)] = None,
    gpu_type: Annotated[str | None, typer.Option(help=gpu_fleet.TYPE_HELP)] = None,
    min_gpu_memory: Annotated[str | None, typer.Option(help=gpu_fleet.MIN_MEMORY_HELP)] = None,
    after: Annotated[
        list[int] | None, typer.Option("--after", help="Start only after this task succeeded.")
    ] = None,
    after_any: Annotated[
        list[int] | None, typer.Option("--after-any", help="Start only after this task ended.")
    ] = None,
    after_failed: Annotated[
        list[int] | None,
        typer.Option("--after-failed", help="Start only if this task failed or was cancelled."),
    ] = None,
    random: Annotated[
        list[str] | None,
        typer.Option(
            "--random",
            help="KEY=KIND:A,B random values (uniform, loguniform, randint,"
            " choice); crossed with --grid.",
        ),
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Random points to draw for --random.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of --random [default: 0].")] = None,
    max_running: Annotated[
        int | None, typer.Option(help="At most this many of these tasks run at once.")
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option("--outputs", help="Glob of files to copy back after a run (repeatable)."),
    ] = None,
    skip_existing: Annotated[
        bool,
        typer.Option("--skip-existing", help="Skip tasks already queued (same template and args)."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the commands it would add; add nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new ids as JSON.")] = False,
    hosts: AddHostsOption = None,
) -> None:
    """Add tasks: one command template, args from --args, --grid and --file.

    Example: labtasker queue add --grid lr=0.1,0.01 --grid seed=1,2 -- python train.py --lr %{lr}
    """
    with reported():
        batch = build_batch(
            cmd=cmd,
            words=words or [],
            args_json=args_json or [],
            grid=grid or [],
            file=file,
            name=name,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            gpus=gpus,
            after=after or [],
            after_any=after_any or [],
            after_failed=after_failed or [],
            random=random or [],
            samples=samples,
            seed=seed,
            max_running=max_running,
            outputs=outputs or [],
            gpu_needs=(gpu_memory, gpu_type, min_gpu_memory),
        )
        outputs_note(batch.outputs)
        if dry_run:
            _dry_run(ctx, batch, as_json, skip_existing)
            return
        store = _store(ctx, create=True, batch=batch)
        from dispatcher.dispatch.fleet import refuse_impossible_gpu_needs

        refuse_impossible_gpu_needs(batch, store.path, hosts)
        result, snapshot = add_snapshotted(store, batch, hosts, skip_existing=skip_existing)
        _repeated_note(result.repeated)
        duplicates_note(result.duplicates)
        if as_json:
            sys.stdout.write(json.dumps(result.ids) + "\n")
            return
        if not result.ids:
            out("Added 0 tasks.")
        elif len(result.ids) == 1:
            out(f"Added 1 task (id {result.ids[0]}).")
        else:
            out(f"Added {len(result.ids)} tasks (ids {result.ids[0]}-{result.ids[-1]}).")
        if result.skipped:
            note(
                f"Skipped {plural(result.skipped, 'task')} already queued (same template and args)."
            )
        out(snapshot)


@queue_app.command("ls")
def ls(
    ctx: typer.Context,
    state: StateOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every match as JSON.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(help=f"Rows to show [default: {LS_DEFAULT_LIMIT}; all with --json].", min=0),
    ] = None,
) -> None:
    """List tasks, oldest first: id, name, state, priority, args, host:gpus, attempt, age."""
    with reported():
        states = _states(state)
        store = _store(ctx)
        if as_json:
            _ls_json(store, states, limit)
            return
        shown = LS_DEFAULT_LIMIT if limit is None else limit
        with store.transaction() as tx:
            tasks = tx.tasks(states=states, limit=shown)
            total = tx.count(states=states) if len(tasks) >= shown else len(tasks)
        if not total:
            what = " in state " + ", ".join(states) if states else ""
            out(f"[dim]No tasks{what}.[/]" if states else f"[dim]{EMPTY_QUEUE}[/]")
            return
        from rich.console import Console

        console = Console(highlight=False)
        if tasks:
            from dispatcher.ui.views import ls_table

            console.print(ls_table(tasks))
        if total > len(tasks):
            console.print(
                f"[dim]… {total - len(tasks):,} more not shown"
                " (use --limit N, --state, or --json for all)[/]"
            )


def _ls_json(store: Store, states: list[TaskState] | None, limit: int | None) -> None:
    # Pages by id, one short transaction each, so a huge listing never holds the file for long.
    out = sys.stdout
    out.write("[")
    last, left, first = None, limit, True
    while left is None or left > 0:
        page = _JSON_PAGE if left is None else min(left, _JSON_PAGE)
        with store.transaction() as tx:
            tasks = tx.tasks(states=states, limit=page, after_id=last)
        for task in tasks:
            out.write(("" if first else ",\n") + json.dumps(task.to_json(), ensure_ascii=False))
            first = False
        if len(tasks) < page:
            break
        last = tasks[-1].id
        left = None if left is None else left - len(tasks)
    out.write("]\n")


@queue_app.command("cancel")
def cancel(ctx: typer.Context, ids: IdsArgument = None, state: StateOption = None) -> None:
    """Cancel tasks: pending ones at once; launching/running ones are stopped by the dispatcher."""
    with reported():
        if not ids and not state:
            raise UsageError("name the tasks to cancel: task ids, or --state pending")
        from dispatcher.config.paths import dispatcher_running

        store = _store(ctx)
        result = store.cancel(ids or None, states=_states(state))
        parts = []
        if result.cancelled or not result.requested:
            parts.append(f"Cancelled {len(result.cancelled)} pending")
            parts[-1] += " task" if len(result.cancelled) == 1 else " tasks"
        if result.requested:
            word = "task" if len(result.requested) == 1 else "tasks"
            parts.append(
                f"asked the dispatcher to stop {len(result.requested)} running {word}"
                f" ({id_ranges(result.requested)})"
            )
            if not dispatcher_running(store.path):
                parts.append(
                    "no dispatcher is running; the next `labtasker dispatch` stops them first"
                )
        out("; ".join(parts) + ".")
        if result.waiting:
            them = "it" if len(result.cancelled) + len(result.requested) == 1 else "them"
            note(f"Also cancelled {plural(len(result.waiting), 'task')} waiting for {them}"
                 f" (--after): {ids_text(result.waiting)}.", style="dim")  # fmt: skip
        if result.skipped:
            shown = ", ".join(f"{i} ({s})" for i, s in result.skipped[:10])
            more = f" and {len(result.skipped) - 10} more" if len(result.skipped) > 10 else ""
            note(f"Left alone (already finished or lost): {shown}{more}.", style="dim")


@queue_app.command("retry")
def retry(
    ctx: typer.Context,
    ids: IdsArgument = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry every failed task.")] = False,
    state: StateOption = None,
) -> None:
    """Send failed, cancelled or lost tasks back to pending (their attempt count is kept)."""
    with reported():
        states = _states(state) or []
        if failed:
            states.append(TaskState.FAILED)
        if not ids and not states:
            raise UsageError("name the tasks to retry: task ids, --failed or --state")
        moved = _store(ctx).retry(ids or None, states=states or None)
        if moved:
            out(f"Retrying {plural(len(moved), 'task')} ({ids_text(moved)}): back to pending.")
        else:
            out("No tasks to retry.")
        again = sorted(set(ids or ()) - set(moved))  # another dependency still cannot hold
        if again:
            note(f"Cancelled again: {ids_text(again)}; see `labtasker queue show ID` for why.")
