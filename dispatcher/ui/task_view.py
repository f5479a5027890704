"""The view of one task (``labtasker queue show ID``): its command, args, settings,
dependencies and every attempt, as rich renderables and as JSON. Rendering only: the caller
reads the task, its attempts and the states of the tasks it depends on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from dispatcher.core.deps import DepKind
from dispatcher.core.gpu_packing import needs_text
from dispatcher.core.models import ACTIVE_STATES, Task, TaskState
from dispatcher.core.outcome import exit_and_signal
from dispatcher.ui.views import STATE_STYLE, format_duration

if TYPE_CHECKING:
    from dispatcher.store.txn import Attempt

#: The keys of each attempt in ``queue show --json``, in this order.
ATTEMPT_KEYS = ("attempt", "host", "gpus", "run_id", "started_at", "finished_at", "exit_code",
                "signal", "reason")  # fmt: skip


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def attempt_rows(task: Task, finished: Sequence[Attempt]) -> list[dict[str, Any]]:
    """Every attempt as a dict of ``ATTEMPT_KEYS``, oldest first: the finished ones, then the
    one in flight (launching or running: no end yet). A run killed by a signal has no exit
    code; ``signal`` names the signal."""
    rows = []
    for a in finished:
        code, sig = exit_and_signal(a.exit_code)
        values = (a.attempt, a.host, a.gpu_ids, a.run_id, _iso(a.started_at),
                  _iso(a.finished_at), code, sig, a.reason)  # fmt: skip
        rows.append(dict(zip(ATTEMPT_KEYS, values, strict=True)))
    if task.state in ACTIVE_STATES:
        values = (task.attempt, task.host, task.gpu_ids, task.run_id, _iso(task.started_at),
                  None, None, None, task.reason)  # fmt: skip
        rows.append(dict(zip(ATTEMPT_KEYS, values, strict=True)))
    return rows


def task_json(task: Task, finished: Sequence[Attempt]) -> dict[str, Any]:
    """The ``queue show --json`` object: the ``queue ls --json`` one plus ``attempts``."""
    return {**task.to_json(), "attempts": attempt_rows(task, finished)}


def _exit_words(row: Mapping[str, Any]) -> str:
    if row["signal"]:
        return f"signal {row['signal']}"
    return "" if row["exit_code"] is None else f"exit {row['exit_code']}"


def _when(text: str | None) -> str:
    return "" if text is None else text.replace("T", " ").removesuffix("Z")[:19]


def _attempt_lines(row: Mapping[str, Any]) -> Text:
    """Where an attempt ran, when, how it ended and why: three lines, wrapped, never cut."""
    where = [row["host"] or "not placed"]
    if row["gpus"]:
        where.append("gpus " + ",".join(str(g) for g in row["gpus"]))
    if row["run_id"]:
        where.append(f"run {row['run_id']}")
    start, end = row["started_at"], row["finished_at"]
    when = f"{_when(start) or 'not started'} → {_when(end) or 'still running'}"
    if start and end:
        took = datetime.fromisoformat(end) - datetime.fromisoformat(start)
        when += f" ({format_duration(took.total_seconds())})"
    ended = " · ".join(p for p in (when, _exit_words(row)) if p)
    text = Text(" · ".join(where) + "\n" + ended)
    if row["reason"]:
        text.append("\n" + str(row["reason"]), style="yellow")
    return text


def task_view(
    task: Task, finished: Sequence[Attempt], dep_states: Mapping[int, TaskState]
) -> RenderableType:
    """The text of ``queue show``: a table of fields, then one row per attempt."""
    head = Text(f"task {task.id}", style="bold")
    head.append("  ")
    head.append(str(task.state), style=STATE_STYLE[task.state])
    if task.name:
        head.append(f"  {task.name}")
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    fields.add_row("command", Text(task.command))
    if task.template != task.command:
        fields.add_row("template", Text(task.template))
    fields.add_row("args", Text(json.dumps(task.args, ensure_ascii=False)))
    settings = [f"priority {task.priority}", f"attempts {task.attempt}/{task.max_attempts}"]
    if task.gpus is not None:
        settings.append(f"gpus {task.gpus}")
    needs = needs_text(task.gpus, task.gpu_memory, task.gpu_type, task.min_gpu_memory)
    if needs:
        settings.append(f"gpu needs {needs}")
    if task.timeout is not None:
        settings.append(f"timeout {format_duration(task.timeout)}")
    fields.add_row("settings", " · ".join(settings))
    if task.snapshot:  # the code it was queued with (docs/queue.md, "The project snapshot")
        code = [f"snapshot {task.snapshot[:12]}"]
        if task.git_commit:
            code.append(f"git {task.git_commit[:12]}" + (" (dirty)" if task.git_dirty else ""))
        fields.add_row("code", " · ".join(code))
    for kind in DepKind:
        deps = getattr(task, kind.value)
        if deps:
            named = [f"{d} ({dep_states.get(d, 'removed')})" for d in deps]
            fields.add_row(kind.option.removeprefix("--"), ", ".join(named))
    if task.reason:
        fields.add_row("reason", Text(task.reason))
    if task.result is not None:
        fields.add_row("result", Text(json.dumps(task.result, ensure_ascii=False)))
    rows = attempt_rows(task, finished)
    if not rows:
        return Group(head, fields, Text("No attempts yet.", style="dim"))
    attempts = Table.grid(padding=(0, 2))
    attempts.add_column(style="bold", no_wrap=True)
    attempts.add_column(overflow="fold")
    for r in rows:
        attempts.add_row(f"attempt {r['attempt']}", _attempt_lines(r))
    return Group(head, fields, Text(""), attempts)
