"""Rich rendering of tasks, counts, hosts, GPU use and the ETA. Rendering only: callers fetch data.

Columns appear only when some row needs them (no empty "GPU" column on a CPU-only setup).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from dispatcher.core.gpu_packing import needs_text
from dispatcher.core.models import Task, TaskState
from dispatcher.core.outcome import real_attempts
from dispatcher.core.words import EMPTY_QUEUE

if TYPE_CHECKING:
    from dispatcher.dispatch.loop import Snapshot

STATE_STYLE = {
    TaskState.PENDING: "cyan",
    TaskState.LAUNCHING: "magenta",
    TaskState.RUNNING: "bold blue",
    TaskState.SUCCEEDED: "green",
    TaskState.FAILED: "bold red",
    TaskState.CANCELLED: "yellow",
    TaskState.LOST: "red",
}


def format_duration(seconds: float | None) -> str:
    """'4s', '3m05s', '2h03m', '3d04h'."""
    if seconds is None:
        return ""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def since(t: datetime | None, now: datetime | None = None) -> float | None:
    """Seconds from ``t`` to ``now`` (default: the current UTC time)."""
    if t is None:
        return None
    now = now or datetime.now(UTC)
    return (now - t).total_seconds()


def compact_args(args: Mapping[str, Any], limit: int = 60) -> str:
    """``lr=0.1 seed=2`` for a flat dict; JSON for nested values; cut at ``limit`` characters."""
    parts = []
    for key, value in args.items():
        shown = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{key}={shown}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def placement(task: Task) -> str:
    """``gpu-a:0,1`` / ``cpu-box`` / empty."""
    if not task.host:
        return ""
    if task.gpu_ids:
        return f"{task.host}:{','.join(str(i) for i in task.gpu_ids)}"
    return task.host


def counts_line(counts: Mapping[TaskState, int]) -> Text:
    """'3 running · 10 pending · 40 succeeded · 1 failed' (zero counts left out)."""
    text = Text()
    order = [
        TaskState.RUNNING,
        TaskState.LAUNCHING,
        TaskState.PENDING,
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.LOST,
        TaskState.CANCELLED,
    ]
    shown = [s for s in order if counts.get(s)]
    for i, state in enumerate(shown):
        if i:
            text.append(" · ", style="dim")
        text.append(f"{counts[state]} {state}", style=STATE_STYLE[state])
    if not shown:
        text.append(EMPTY_QUEUE, style="dim")
    return text


def _attempt_text(task: Task) -> str:
    """``2/3``: the attempts that count against ``--max-attempts``; runs lost to a host (which
    do not count) are added as ``+1 lost``."""
    if not task.attempt:
        return ""
    lost = f" +{task.losses} lost" if task.losses else ""
    return f"{real_attempts(task)}/{task.max_attempts}{lost}"


def running_table(
    tasks: Sequence[Task],
    *,
    now: datetime | None = None,
    last_lines: Mapping[int, str] | None = None,
) -> Table:
    """The table of ``labtasker status``: what runs where, for how long, and its last words."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("id", justify="right")
    if any(t.name for t in tasks):
        table.add_column("name")
    table.add_column("host")
    if any(t.gpu_ids for t in tasks):
        table.add_column("gpu")
    table.add_column("elapsed", justify="right")
    table.add_column("args", overflow="ellipsis", max_width=50)
    has_job = any(t.job_id for t in tasks)  # on a SLURM cluster: its job, and why it waits
    if has_job:
        table.add_column("slurm job")
    lines = last_lines or {}
    if lines:
        table.add_column("last output", overflow="ellipsis", max_width=60, style="dim")
    has_name = any(t.name for t in tasks)
    has_gpu = any(t.gpu_ids for t in tasks)
    for t in tasks:
        row: list[RenderableType] = [str(t.id)]
        if has_name:
            row.append(t.name or "")
        host = t.host or ""
        if t.state is not TaskState.RUNNING:
            host += f" ({t.state})"
        row.append(host)
        if has_gpu:
            row.append(",".join(str(i) for i in t.gpu_ids or []))
        row.append(format_duration(since(t.started_at, now)))
        row.append(compact_args(t.args))
        if has_job:
            waits = t.reason.rpartition(" pending ")[2] if t.job_id and t.reason else ""
            row.append(f"{t.job_id or ''} pending {waits}" if waits else t.job_id or "")
        if lines:
            row.append(Text(lines.get(t.id, "")))
        table.add_row(*row)
    return table


def eta_seconds(median_runtime: float | None, remaining: int, running: int) -> float | None:
    """Median runtime x remaining tasks / tasks running at once; None when it cannot be known."""
    if median_runtime is None or running <= 0 or remaining <= 0:
        return None
    return median_runtime * remaining / running


def eta_text(median_runtime: float | None, counts: Mapping[TaskState, int]) -> Text:
    """'ETA ~12 min' from finished runtimes and the unfinished counts; 'ETA unknown' without."""
    running = counts.get(TaskState.RUNNING, 0) + counts.get(TaskState.LAUNCHING, 0)
    remaining = running + counts.get(TaskState.PENDING, 0)
    if remaining == 0:
        return Text("")
    eta = eta_seconds(median_runtime, remaining, running)
    if eta is None:
        return Text("ETA unknown", style="dim")
    if eta < 60:
        words = "<1 min"
    elif eta < 90 * 60:
        words = f"~{round(eta / 60)} min"
    elif eta < 48 * 3600:
        words = f"~{eta / 3600:.1f} h"
    else:
        words = f"~{eta / 86400:.1f} days"
    return Text(f"ETA {words}", style="bold")


def _gib(mib: Any) -> str:
    return f"{mib / 1024:.1f}" if isinstance(mib, int | float) else "?"


def gpu_table(hosts: Mapping[str, Mapping[str, Any]]) -> Table | None:
    """Per host and GPU: memory used/total, declared by our sharing tasks, free for them, and
    who uses it: our task N, our tasks sharing it, someone else (who), or free; None if no GPU.

    ``hosts`` is the dispatcher's view from the status file (``logs.gpu_views``). The
    "declared" column appears only when some GPU is shared.
    """
    shared = any(g.get("shared_by") for v in hosts.values() for g in v.get("gpus") or [])
    table = Table(box=None, header_style="bold", pad_edge=False)
    titles = ["host", "gpu", "memory (GiB)", *["declared"] * shared, "free", "used by"]
    for title in titles:
        table.add_column(title)
    rows = 0
    for name, view in hosts.items():
        gpus = view.get("gpus") or []
        age = view.get("age")
        label = Text(name, style="bold")
        if isinstance(age, int | float) and age >= 10:  # an old reading: say how old
            label.append(f" {format_duration(age)} ago", style="dim")
        if view.get("error") and not gpus:
            table.add_row(
                label, *[""] * (len(titles) - 2), Text(str(view["error"]), style="yellow")
            )
            rows += 1
        for g in gpus:
            mem = f"{_gib(g.get('used_mib'))}/{_gib(g.get('total_mib'))}"
            cells: list[RenderableType] = [label, str(g.get("index")), mem]
            if shared:
                cells.append(_gib(g["declared_mib"]) if g.get("declared_mib") is not None else "")
            cells += [_gib(g.get("free_mib")), _who(g)]
            table.add_row(*cells)
            label, rows = Text(""), rows + 1  # the host's name once, on its first GPU
    return table if rows else None


def _who(g: Mapping[str, Any]) -> Text:
    sharers = g.get("shared_by") or []
    if g.get("task") is not None:
        return Text(f"task {g['task']}", style="bold blue")
    if sharers:
        ids = ", ".join(map(str, sharers))
        return Text(f"task {ids}" if len(sharers) == 1 else f"tasks {ids}", style="bold blue")
    if g.get("other"):
        return Text(str(g["other"]), style="yellow")
    return Text("free", style="green")


def freshness(written_at: float | None, now: float, *, running: bool) -> Text | None:
    """A warning when the dispatcher's view is stale: it stopped, or has not written lately.

    ``written_at`` and ``now`` are seconds since the epoch.
    """
    if written_at is None:
        return None if running else Text("No dispatcher is running.", style="dim")
    age = format_duration(max(now - written_at, 0.0))
    if not running:
        return Text(
            f"No dispatcher is running: last output lines and GPU use are from {age} ago.",
            style="yellow",
        )
    if now - written_at > 30:
        return Text(f"The dispatcher has not reported for {age}.", style="yellow")
    return None


def progress_panel(snapshot: Snapshot) -> RenderableType:
    """The live view of ``labtasker dispatch``: a bar of finished/total and one line per host."""
    from rich.progress_bar import ProgressBar

    counts = snapshot.counts
    total = sum(counts.values())
    done = sum(
        counts.get(s, 0) for s in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)
    )
    head = Table.grid(padding=(0, 1))
    head.add_row(
        ProgressBar(total=max(total, 1), completed=done, width=40),
        Text(f"{done}/{total}"),
        counts_line(counts),
        eta_text(snapshot.median_runtime, counts),
    )
    hosts = Table.grid(padding=(0, 2))
    for name, desc in snapshot.hosts:
        style = "green" if desc.startswith("up") else "yellow"
        hosts.add_row(Text(name, style="bold"), Text(desc, style=style))
    return Group(head, hosts)


@dataclass
class HostCheck:
    """One host's answers to ``labtasker hosts check`` (error set when something failed)."""

    name: str
    ok: bool
    python: str = ""
    user: str = ""
    workdir: str = ""
    gpus: str = ""
    error: str | None = None
    inventory: dict[str, Any] | None = None  # the helper's ``gpus`` reply, for the GPU table


def hosts_table(rows: Sequence[HostCheck]) -> Table:
    """One row per host: ok/FAIL, Python, user, workdir, GPUs, and a problem column if needed."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    titles = ["host", "", "python", "user", "workdir", "gpus"]
    problems = any(r.error for r in rows)
    for title in [*titles, "problem"] if problems else titles:
        table.add_column(title)
    for r in rows:
        mark = Text("ok", style="green") if r.ok else Text("FAIL", style="bold red")
        cells: list[RenderableType] = [r.name, mark, r.python, r.user, r.workdir, r.gpus]
        if problems:
            cells.append(Text(r.error or "", style="red"))
        table.add_row(*cells)
    return table


def add_reason_column(table: Table) -> None:
    """The reason column: wrapped, never cut, and never squeezed below a readable width."""
    table.add_column("reason", overflow="fold", min_width=24)


def failures_table(tasks: Sequence[Task], *, now: datetime | None = None) -> Table:
    """The failed tasks ``labtasker status`` lists under the running ones: where each ran,
    when it ended and why (``labtasker queue show ID`` has every attempt)."""
    table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
    table.add_column("failed", justify="right", no_wrap=True)
    has_name = any(t.name for t in tasks)
    if has_name:
        table.add_column("name", no_wrap=True)
    table.add_column("host", no_wrap=True)
    table.add_column("ended", justify="right", no_wrap=True)
    add_reason_column(table)
    for t in tasks:
        row = [str(t.id), *([t.name or ""] if has_name else []), t.host or ""]
        ago = since(t.finished_at, now)
        row += ["" if ago is None else f"{format_duration(ago)} ago", t.reason or ""]
        table.add_row(*row)
    return table


def ls_table(tasks: Sequence[Task]) -> Table:
    """The ``queue ls`` table; name, priority, gpu needs, host:gpus and attempt appear only when
    some row needs them."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns: list[tuple[str, Any]] = [("id", lambda t: str(t.id))]
    if any(t.name for t in tasks):
        columns.append(("name", lambda t: t.name or ""))
    columns.append(("state", lambda t: Text(str(t.state), style=STATE_STYLE[t.state])))
    if any(t.priority for t in tasks):
        columns.append(("priority", lambda t: str(t.priority)))
    columns.append(("args", lambda t: compact_args(t.args)))
    needs = {t.id: needs_text(t.gpus, t.gpu_memory, t.gpu_type, t.min_gpu_memory) for t in tasks}
    if any(needs.values()):
        columns.append(("gpu needs", lambda t: needs[t.id]))
    if any(t.host for t in tasks):
        columns.append(("host:gpus", placement))
    if any(t.attempt for t in tasks):
        columns.append(("attempt", _attempt_text))
    columns.append(("age", lambda t: format_duration(since(t.created_at))))
    if any(t.reason for t in tasks):
        columns.append(("reason", lambda t: t.reason or ""))
    for title, _ in columns:
        if title == "args":  # a long one that may be cut: args are in `queue show`
            table.add_column(title, overflow="ellipsis", no_wrap=True, max_width=50)
        elif title == "reason":
            add_reason_column(table)
        else:
            right = title in ("id", "priority", "attempt", "age")
            table.add_column(title, justify="right" if right else "left", no_wrap=True)
    for t in tasks:
        table.add_row(*(cell(t) for _, cell in columns))
    return table
