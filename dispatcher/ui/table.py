"""A table that fits the terminal: for ``labtasker results``. Knows nothing of particular columns:
it keeps them in the order given while they fit, cuts long cells with an ellipsis, and names the
columns it had to leave out. Rendering only: callers fetch the rows and choose the order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.cells import cell_len
from rich.table import Table

#: A column is cut to this many characters before any column is left out; wider ones get the
#: room left over once the kept columns are placed.
CELL_CAP = 20
#: Characters between two columns: padding, rule, padding.
GAP = 3


@dataclass(frozen=True)
class Fit:
    """The columns kept (their indices, in order), the width of each, and the names left out."""

    kept: list[int]
    widths: list[int]
    hidden: list[str]


def cell_text(value: Any) -> str:
    """One value as the table shows it: floats to 6 digits, lists and objects as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def fit(names: Sequence[str], cells: Sequence[Sequence[str]], width: int) -> Fit:
    """Which columns fit in ``width`` characters, and how wide each is.

    Each column first takes its natural width (header or widest cell) up to CELL_CAP; columns
    are kept in order while they fit, the first one always (cut to ``width``); the room left is
    then given back, in order, to the kept columns that were cut.
    """
    natural = [
        max([cell_len(name), *(cell_len(row[i]) for row in cells)]) for i, name in enumerate(names)
    ]
    kept: list[int] = []
    widths: list[int] = []
    used = 0
    for i, full in enumerate(natural):
        want = max(1, min(full, CELL_CAP))
        extra = want + (GAP if kept else 0)
        if kept and used + extra > width:
            continue
        kept.append(i)
        widths.append(min(want, width))
        used += min(extra, width)
    room = width - used
    for j, i in enumerate(kept):
        grow = min(room, natural[i] - widths[j])
        if grow > 0:
            widths[j] += grow
            room -= grow
    return Fit(kept, widths, [names[i] for i in range(len(names)) if i not in kept])


def fitted_table(
    names: Sequence[str], rows: Sequence[Sequence[Any]], width: int
) -> tuple[Table, Fit]:
    """A rich table of ``rows`` no wider than ``width``, and the fit behind it."""
    cells = [[cell_text(v) for v in row] for row in rows]
    plan = fit(names, cells, width)
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for i, w in zip(plan.kept, plan.widths, strict=True):
        table.add_column(names[i], no_wrap=True, overflow="ellipsis", width=w, max_width=w)
    for row in cells:
        table.add_row(*(row[i] for i in plan.kept), end_section=False)
    return table, plan


def hidden_note(hidden: Sequence[str], width: int) -> str:
    """The line under a table that left columns out: which, and how to see them."""
    what = "1 column" if len(hidden) == 1 else f"{len(hidden)} columns"
    return (
        f"{what} hidden to fit {width} characters: {', '.join(hidden)}."
        " Choose with --columns, or see all with --wide or --format csv."
    )
