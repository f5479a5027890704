"""The project snapshot's part of ``queue add`` and ``queue rm``: the ``--hosts`` option of
``queue add``, the snapshot taken with the add, and the clean-up after a removal. Parse, call
``dispatcher.snapshot``, print.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dispatcher.cli.common import note

if TYPE_CHECKING:
    from dispatcher.store.add import AddResult, TaskBatch
    from dispatcher.store.queue import Store

#: ``queue add --hosts``: only its [sync] table is read (adding tasks needs no valid host).
AddHostsOption = Annotated[
    Path | None,
    typer.Option(
        "--hosts", "-H", help="Hosts file: its [sync] table shapes the project snapshot, its"
        " GPUs check GPU needs [default: hosts.toml here, else in the queue's project directory].",
        show_default=False,
    ),
]  # fmt: skip


def add_snapshotted(
    store: Store, batch: TaskBatch, hosts: Path | None, *, skip_existing: bool
) -> tuple[AddResult, str]:
    """Snapshot the project and add ``batch`` recording it; the add's result and the line that
    tells the snapshot's id, file count and size. What the snapshot left out goes to stderr."""
    from dispatcher.core.snapshot import format_size
    from dispatcher.core.words import plural
    from dispatcher.snapshot.take import add_with_snapshot

    result, taken = add_with_snapshot(store, batch, hosts_path=hosts, skip_existing=skip_existing)
    for warning in taken.warnings:
        note(f"snapshot: {warning}")
    files = plural(taken.files, "file")
    stored = f"{taken.new_blobs} new" if taken.new else "unchanged"
    snapshot = taken.code.snapshot or ""
    return result, f"Snapshot {snapshot[:12]}: {files}, {format_size(taken.size)} ({stored})."


def collect_snapshots(store: Store) -> str | None:
    """Remove the snapshot data no task in the queue refers to; a line saying so, if any went."""
    from dispatcher.core.snapshot import format_size
    from dispatcher.core.words import plural
    from dispatcher.snapshot.take import collect

    gone = collect(store)
    if not gone.manifests:
        return None
    snapshots = plural(gone.manifests, "snapshot")
    return f"Removed {snapshots} no task uses ({format_size(gone.bytes)} freed)."
