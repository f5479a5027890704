"""A table that fits the terminal: for ``labtasker results``. Knows nothing of particular columns:
it keeps them in the order given while they fit, cuts long cells with an ellipsis, and names the
columns it had to leave out; columns the caller names as wrapping (a reason) are always kept and
wrap onto more lines instead of being cut. Rendering only: callers fetch the rows and choose the
order.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
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
#: A wrapping column is kept at least this wide (or as wide as its widest cell, if less).
WRAP_MIN = 24


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


def fit(
    names: Sequence[str], cells: Sequence[Sequence[str]], width: int, wrap: Collection[str] = ()
) -> Fit:
    """Which columns fit in ``width`` characters, and how wide each is.

    The columns named in ``wrap`` come first: each is kept, WRAP_MIN wide (or its natural
    width, if less). Each other column takes its natural width (header or widest cell) up to
    CELL_CAP; columns are kept in order while they fit, the first one always (cut to what is
    left); the room left is then given back, in order, to the kept columns that were cut or wrap.
    """
    natural = [
        max([cell_len(name), *(cell_len(row[i]) for row in cells)]) for i, name in enumerate(names)
    ]
    wrapping = {i: max(1, min(natural[i], WRAP_MIN)) for i, n in enumerate(names) if n in wrap}
    kept: list[int] = list(wrapping)
    widths: list[int] = list(wrapping.values())
    used = sum(widths) + GAP * len(widths)
    for i, full in enumerate(natural):
        if i in wrapping:
            continue
        want = max(1, min(full, CELL_CAP))
        extra = want + (GAP if kept else 0)
        if len(kept) > len(wrapping) and used + extra > width:
            continue
        kept.append(i)
        widths.append(max(1, min(want, width - used)))
        used += min(extra, max(width - used, 1 + GAP))
    order = sorted(range(len(kept)), key=lambda j: kept[j])
    kept, widths = [kept[j] for j in order], [widths[j] for j in order]
    room = width - used
    for j, i in enumerate(kept):
        grow = min(room, natural[i] - widths[j])
        if grow > 0:
            widths[j] += grow
            room -= grow
    return Fit(kept, widths, [names[i] for i in range(len(names)) if i not in kept])


def fitted_table(
    names: Sequence[str], rows: Sequence[Sequence[Any]], width: int, wrap: Collection[str] = ()
) -> tuple[Table, Fit]:
    """A rich table of ``rows`` no wider than ``width``, and the fit behind it; the columns
    named in ``wrap`` wrap their cells onto more lines (never cut)."""
    cells = [[cell_text(v) for v in row] for row in rows]
    plan = fit(names, cells, width, wrap)
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for i, w in zip(plan.kept, plan.widths, strict=True):
        if names[i] in wrap:
            table.add_column(names[i], overflow="fold", width=w, max_width=w)
            continue
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
