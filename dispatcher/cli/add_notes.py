"""What ``queue add`` says beyond the new ids: points dropped as repeats, output globs that name
no task, and the dry run (what it would add, drop and skip)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import typer

from dispatcher.cli.common import note
from dispatcher.core.words import ids_text, plural

if TYPE_CHECKING:
    from dispatcher.core.batch import TaskBatch


def repeated_note(repeated: int, *, would: bool = False) -> None:
    """Say how many points of this add were dropped as repeats of an earlier point."""
    if repeated:
        points = "1 duplicate point" if repeated == 1 else f"{repeated} duplicate points"
        verb = "would be" if would else "was" if repeated == 1 else "were"
        note(
            f"{points} in this add {verb} dropped (the same args as an earlier point);"
            " add a key such as repeat to run a point several times"
        )


def dry_run(ctx: typer.Context, batch: TaskBatch, as_json: bool, skip_existing: bool) -> None:
    """Print what the add would add (and, on stderr, what it would drop or skip)."""
    from dispatcher.cli.app import db_option
    from dispatcher.config.paths import locate_db
    from dispatcher.store.queue import Store

    # Store(path), not open_store: a dry run creates nothing, not even the queue's directory,
    # and reads the queue (for --skip-existing) only when there is one.
    path, _ = locate_db(db_option(ctx))
    found = Store(path).preview_batch(batch, skip_existing=skip_existing)
    out = sys.stdout
    if as_json:
        items = [{"args": a, "command": c} for a, c in found.tasks]
        out.write(json.dumps(items, ensure_ascii=False) + "\n")
    else:
        for _, command in found.tasks:
            out.write(command + "\n")
    out.flush()
    repeated_note(found.repeated, would=True)
    if found.skipped:
        note(
            f"Would skip {plural(len(found.skipped), 'task')} already queued (same template and"
            f" args as {ids_text(found.skipped)}); would add {len(found.tasks)}."
        )


def duplicates_note(dup_ids: Sequence[int]) -> None:
    """The warning for added tasks that duplicate tasks already queued (no --skip-existing)."""
    if dup_ids:
        what = (
            "1 task duplicates an existing one"
            if len(dup_ids) == 1
            else f"{len(dup_ids)} tasks duplicate existing ones"
        )
        note(f"{what} ({ids_text(dup_ids)}); use --skip-existing to skip them")


def outputs_note(globs: Sequence[str]) -> None:
    """Warn about output globs that name no task: in a working directory that tasks share
    (every task of a host shares its ``workdir``), each would copy the others' files too."""
    from dispatcher.core.globs import has_placeholders

    for pattern in globs:
        if not has_placeholders(pattern):
            note(
                f"output glob {pattern!r} names no task: each task copies back every match in"
                " its working directory, other tasks' files too; put %{key}, {task_id} or"
                " {run_id} in it (e.g. out/{task_id}/*.json) and write there"
            )
