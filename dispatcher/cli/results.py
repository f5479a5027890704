"""``labtasker results`` (one row per task, args and result flattened) and ``labtasker sql``
(read-only SQL over the queue). Parse, call ``dispatcher.store.results``, print.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dispatcher.cli.app import app
from dispatcher.cli.common import StateOption, note, open_store, reported
from dispatcher.cli.common import states as parse_states
from dispatcher.core.words import EMPTY_QUEUE
from dispatcher.errors import UsageError

if TYPE_CHECKING:
    from dispatcher.core.models import TaskState
    from dispatcher.store.queue import Store
    from dispatcher.store.selection import Selection

#: Rows the table view shows unless --limit says otherwise.
TABLE_LIMIT = 50
#: The widest line the table view prints; beyond it, columns are truncated.
_MAX_WIDTH = 1000


class ResultsFormat(StrEnum):
    """Output formats of ``results``."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"


class SqlFormat(StrEnum):
    """Output formats of ``sql``."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"


LimitOption = Annotated[
    int | None,
    typer.Option(
        "--limit", "-n", min=0, help=f"Rows the table shows [default: {TABLE_LIMIT}].",
        show_default=False,
    ),
]  # fmt: skip


def _print_table(names: Sequence[str], rows: Sequence[Sequence[Any]], more: str | None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dispatcher.ui.table import cell_text

    console = Console(highlight=False)
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for name in names:
        # One line per row: a narrow terminal truncates cells (csv and json hold everything).
        table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=min(len(name), 24))
    for row in rows:
        table.add_row(*(cell_text(v) for v in row), end_section=False)
    from rich.measure import Measurement

    # Rich drops columns that do not fit; print wide lines instead (a pager can scroll them).
    wanted = Measurement.get(console, console.options.update_width(_MAX_WIDTH), table).maximum
    if wanted > console.width:
        console = Console(highlight=False, width=min(wanted, _MAX_WIDTH))
    console.print(table)
    if more:
        console.print(f"[dim]{escape(more)}[/]")


def _infer_format(output: Path) -> ResultsFormat:
    suffix = output.suffix.lower().lstrip(".")
    if suffix in ("csv", "json", "parquet"):
        return ResultsFormat(suffix)
    raise UsageError(
        f"cannot tell the format of {output} from its suffix; add --format csv|json|parquet"
    )


ColumnsOption = Annotated[
    str | None,
    typer.Option(
        "--columns", "-c", show_default=False,
        help="Columns to show, comma-separated: id,state,args.lr,result.acc (or bare lr,acc).",
    ),
]  # fmt: skip
SortOption = Annotated[
    str | None,
    typer.Option(
        "--sort", show_default=False,
        help="Sort by these columns, comma-separated; -NAME descending: --sort -result.acc,id.",
    ),
]  # fmt: skip
WhereOption = Annotated[
    str | None,
    typer.Option(
        "--where", "-w", show_default=False,
        help="Keep the rows where this SQL condition holds: --where 'result.acc > 0.9'.",
    ),
]  # fmt: skip


@app.command()
def results(
    ctx: typer.Context,
    fmt: Annotated[
        ResultsFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="table, csv, json or parquet [default: table, or from --output].",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of the terminal."),
    ] = None,
    state: StateOption = None,
    columns: ColumnsOption = None,
    sort: SortOption = None,
    where: WhereOption = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Table: every column in full, however wide.")
    ] = False,
    limit: LimitOption = None,
    plot: Annotated[
        str | None,
        typer.Option(
            "--plot",
            show_default=False,
            help="Draw this metric against --x in the terminal: --plot result.acc.",
        ),
    ] = None,
    x: Annotated[
        str | None, typer.Option("--x", show_default=False, help="The arg on --plot's x axis.")
    ] = None,
    by: Annotated[
        str | None,
        typer.Option("--by", show_default=False, help="One marker per value of this arg."),
    ] = None,
) -> None:
    """One row per task: id, name, state, host, gpus, runtime, exit_code, reason, args.KEY,
    result.KEY (the table shows reason only when some row has one).

    Nested keys are joined by dots (result.val.loss). The table fits the terminal (args and
    result first; --wide for all) and shows 50 rows (--limit); csv, json and parquet hold every
    row. Example: labtasker results -w "state = 'succeeded'" --sort -acc -o runs.parquet
    --plot acc --x lr [--by seed] draws the metric against the arg in the terminal.
    """
    from dispatcher.store import results as res
    from dispatcher.store.selection import Selection

    with reported():
        states = parse_states(state)
        if plot is not None or x is not None or by is not None:
            from dispatcher.cli.plot import plot as draw_plot

            if plot is None:
                raise UsageError("--x and --by go with --plot METRIC, e.g. --plot result.acc")
            draw_plot(open_store(ctx), states, plot, x, by)
            return
        chosen = fmt or (_infer_format(output) if output is not None else ResultsFormat.TABLE)
        if chosen is ResultsFormat.TABLE and output is not None:
            raise UsageError("the table view prints to the terminal; for a file use --format"
                             " csv, json or parquet with --output")  # fmt: skip
        if chosen is ResultsFormat.PARQUET and output is None:
            raise UsageError("parquet is binary: give a file with --output FILE.parquet")
        table = chosen is ResultsFormat.TABLE
        sel = Selection(columns, sort, where, args_first=table)
        store = open_store(ctx)  # after the usage checks: those need no queue
        if table:
            _show(store, states, sel, TABLE_LIMIT if limit is None else limit, wide=wide)
            return
        if output is not None:
            n = res.write(store, chosen.value, output, states, sel)
            note(f"Wrote {n:,} {'row' if n == 1 else 'rows'} to {output}.", "dim")
            return
        with tempfile.TemporaryDirectory(prefix="labtasker-results-") as tmp:
            path = Path(tmp) / f"results.{chosen.value}"
            res.write(store, chosen.value, path, states, sel)
            _copy_to_stdout(path)


def _show(
    store: Store, states: list[TaskState] | None, sel: Selection, shown: int, *, wide: bool
) -> None:
    """The results table: fitted to the terminal, or (``wide``) every column in full."""
    from rich.console import Console
    from rich.markup import escape

    from dispatcher.store import results as res
    from dispatcher.ui.table import fitted_table, hidden_note

    names, rows, total = res.read(store, states, limit=shown, sel=sel)
    if not total:
        what = " in state " + ", ".join(states) if states else ""
        where = " matching --where" if sel.where is not None else ""
        note(f"No tasks{what}{where}." if what or where else EMPTY_QUEUE, "dim")
        return
    more = None
    if total > len(rows):
        more = (
            f"Showing the first {len(rows):,} of {total:,} tasks;"
            " use --limit N, or --format csv|json|parquet for all."
        )
    if sel.columns is None:  # a column shows when some row has a value in it (a reason, a name)
        keep = [k for k in range(len(names)) if any(row[k] not in (None, "", []) for row in rows)]
        names = [names[k] for k in keep]
        rows = [tuple(row[k] for k in keep) for row in rows]
    if wide:
        _print_table(names, rows, more)
        return
    console = Console(highlight=False)
    table, plan = fitted_table(names, rows, console.width, wrap=("reason",))  # never cut
    console.print(table)
    for line in (more, hidden_note(plan.hidden, console.width) if plan.hidden else None):
        if line:
            console.print(f"[dim]{escape(line)}[/]")


def _copy_to_stdout(path: Path) -> None:
    sys.stdout.flush()
    with path.open("rb") as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
        # DuckDB's JSON array ends without a newline; a terminal prompt should not follow it.
        if f.tell() and path.suffix == ".json":
            sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


@app.command()
def sql(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="One SELECT (or WITH ... SELECT) statement.")],
    fmt: Annotated[
        SqlFormat, typer.Option("--format", "-f", help="table, csv or json.")
    ] = SqlFormat.TABLE,
    limit: LimitOption = None,
) -> None:
    """Run read-only SQL over the queue: views `tasks` (args and result are JSON) and `attempts`.

    Example: labtasker sql "SELECT args.lr, avg((result->>'acc')::DOUBLE) FROM tasks GROUP BY 1"
    Statements that write are refused; see docs/results.md for the columns and more examples.
    """
    from dispatcher.store import results as res

    with reported():
        store = open_store(ctx)
        if fmt is SqlFormat.TABLE:
            shown = TABLE_LIMIT if limit is None else limit
            names, rows = res.query(store, query, limit=shown + 1)
            more = len(rows) > shown
            rows = rows[:shown]
            if not rows:
                note(f"No rows (columns: {', '.join(names)}).", "dim")
                return
            footer = (
                f"Showing the first {shown:,} rows; use --limit N or --format csv|json for all."
            )
            _print_table(names, rows, footer if more else None)
            return
        names, rows = res.query(store, query)
        out = sys.stdout
        if fmt is SqlFormat.JSON:
            items = [dict(zip(names, row, strict=True)) for row in rows]
            out.write(json.dumps(items, ensure_ascii=False, default=_json_default) + "\n")
            return
        writer = csv.writer(out, lineterminator=os.linesep)
        writer.writerow(names)
        for row in rows:
            writer.writerow([_csv_cell(v) for v in row])


def _json_default(value: Any) -> Any:
    # Timestamps are stored in UTC; DECIMAL averages and UUIDs print as their text.
    if isinstance(value, datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    return str(value)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return value
