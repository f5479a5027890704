"""``labtasker results --plot METRIC --x ARG [--by ARG]``: a metric against an arg drawn in the
terminal (``core.textplot``), with the mean and spread per x below it. Column names resolve as
``results --columns`` resolves them (``core.columns``): full names, or bare keys when unambiguous.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.core.columns import resolve
from dispatcher.core.textplot import Point, draw, legend, summarise
from dispatcher.errors import UsageError

if TYPE_CHECKING:
    from dispatcher.core.models import TaskState
    from dispatcher.store.queue import Store

#: The chart's size in characters, when the terminal is wide enough.
WIDTH, HEIGHT = 72, 18


def plot(
    store: Store, states: list[TaskState] | None, metric: str, x: str | None, by: str | None
) -> None:
    """Print the chart of ``metric`` against ``x``, one marker per value of ``by``."""
    from rich.console import Console
    from rich.markup import escape

    from dispatcher.store import results as res
    from dispatcher.store.selection import Selection

    if x is None:
        raise UsageError("--plot needs --x: the arg on the x axis, e.g. --x args.lr")
    names, _, total = res.read(store, states, limit=0)
    if not total:
        raise UsageError("no tasks to plot; the results table is empty")
    cols = [resolve(metric, names, "--plot"), resolve(x, names, "--x")]
    if by is not None:
        cols.append(resolve(by, names, "--by"))
    _, rows, _ = res.read(store, states, sel=Selection(columns=",".join(["id", *cols])))
    points, skipped = [], 0
    for row in rows:
        y, xv = row[1], row[2]
        if not (_number(y) and _number(xv)):
            skipped += 1
            continue
        points.append(Point(float(xv), float(y), "" if by is None else str(row[3])))
    if not points:
        raise UsageError(f"no task has numbers in both {cols[0]} and {cols[1]}")
    console = Console(highlight=False)
    width = max(20, min(WIDTH, console.width - 12))
    console.print(f"[bold]{escape(cols[0])}[/] against {escape(cols[1])} ({len(points)} tasks)")
    for line in draw(points, width=width, height=HEIGHT, x_label=cols[1]):
        console.print(escape(line))
    key = legend(points, cols[2] if by is not None else "")
    if key:
        console.print(escape(key))
    group = f"{cols[2]}  " if by is not None else ""
    console.print(f"[dim]{escape(group)}{escape(cols[1])}  n  mean  sd[/]")
    for s in summarise(points):
        head = f"{s.group}  " if by is not None else ""
        console.print(escape(f"{head}{s.x:.4g}  {s.n}  {s.mean:.4g}  {s.sd:.3g}"))
    if skipped:
        console.print(f"[dim]{skipped} tasks without a number in both columns left out[/]")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
