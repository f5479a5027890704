"""Duplicates by identity: one add's staged rows classified in SQL against each other and the queue.

A staged row (``store/add.py``) gets its identity (``core/identity.py``: template plus canonical
args, hashed) and is marked as repeating an earlier row of the same add (dropped) or as matching
a pending, launching, running or succeeded task (kept with a warning, or skipped). ``preview``
tells what an add would do, for ``queue add --dry-run``, without writing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from dispatcher.core.identity import IDENT_SQL
from dispatcher.core.models import DUPLICATE_STATES

__all__ = ["DUP_IN", "Counts", "Preview", "classified", "preview"]

DUP_IN = ", ".join(f"'{s.value}'" for s in sorted(DUPLICATE_STATES))
_STAGE_IDS = itertools.count()


class Staged(Protocol):
    """Staged rows (``store.add.Staged``): a SELECT of the staged columns and what it reads."""

    count: int
    sql: str
    params: list[Any]
    axis_tables: list[tuple[str, list[list[Any]]]]
    drop_repeats: bool


@dataclass(frozen=True)
class Counts:
    """How many rows of an add are kept, dropped as repeats, skipped as already queued; the
    temporary table listing the kept ones."""

    table: str
    kept: int
    repeated: int
    skipped: int


@dataclass(frozen=True)
class Preview:
    """What an add would do: the (args, command) of each task it would add, the id of the
    queued task each skipped point matches, how many points repeated an earlier one."""

    tasks: list[tuple[dict[str, Any], str]]
    skipped: list[int]
    repeated: int


def preview(con: Any, staged: Staged, *, skip_existing: bool) -> Preview:
    """What ``insert`` would add (args JSON, command), skip and drop; writes nothing to ``con``'s
    queue (a ``tasks`` table with at least id, state and ident)."""
    if staged.count == 0:
        return Preview([], [], 0)
    with classified(con, staged, False) as counts:
        rows = con.execute(
            f"SELECT s.args, s.command, k.existing FROM ({staged.sql}) s JOIN {counts.table} k"
            " ON s.idx = k.idx ORDER BY s.idx",
            staged.params,
        ).fetchall()
        skipped = con.execute(
            f"SELECT min(t.id) FROM {counts.table} k JOIN tasks t ON t.ident = k.ident"
            f" WHERE t.state IN ({DUP_IN}) GROUP BY k.idx ORDER BY k.idx"
        ).fetchall()
    tasks = [(json.loads(a), c) for a, c, existing in rows if not (skip_existing and existing)]
    return Preview(tasks, [r[0] for r in skipped] if skip_existing else [], counts.repeated)


@contextlib.contextmanager
def classified(con: Any, staged: Staged, skip_existing: bool) -> Iterator[Counts]:
    """Classify the staged rows into a temporary table (``Counts.table``); yields the counts.

    The table holds one narrow row per distinct identity (per row, when ``staged`` keeps
    repeats): the first ``idx`` that has it, the ``ident``, ``existing`` (a queued task has it)
    and ``pos`` (the row's place among the kept ones); repeats of an earlier row are not in it,
    nor, with ``skip_existing``, existing ones.
    Aggregates and joins, no window over the rows: a million-point add stays a matter of seconds.
    """
    for name, cols in staged.axis_tables:
        defs = ", ".join(
            f"unnest(?::{'BIGINT' if c == 0 else 'VARCHAR'}[]) AS c{c}" for c in range(len(cols))
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {defs}", cols)
    ident = IDENT_SQL.format(template="s.template", canon="s.canon")
    stage = f"labtasker_stage_{next(_STAGE_IDS)}"  # unique, as the axis tables' names
    try:
        rows = f"SELECT s.idx, {ident} AS ident FROM ({staged.sql}) s"
        if staged.drop_repeats:
            rows = f"SELECT min(idx) AS idx, ident FROM ({rows}) GROUP BY ident"
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {stage} AS SELECT idx, ident, false AS existing,"
            f" idx AS pos FROM ({rows})",
            staged.params,
        )
        # The join lets DuckDB build its hash table on the smaller side (often the new rows).
        con.execute(
            f"UPDATE {stage} SET existing = true WHERE idx IN (SELECT k.idx FROM {stage} k"
            f" JOIN tasks t ON t.ident = k.ident WHERE t.state IN ({DUP_IN}))"
        )
        distinct, existing = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE existing) FROM {stage}"
        ).fetchone()
        skipped = existing if skip_existing else 0
        if skipped:
            con.execute(f"DELETE FROM {stage} WHERE existing")
        kept = distinct - skipped
        if kept < staged.count:
            con.execute(
                f"UPDATE {stage} SET pos = r.pos FROM (SELECT idx,"
                f" row_number() OVER (ORDER BY idx) - 1 AS pos FROM {stage}) r"
                f" WHERE {stage}.idx = r.idx"
            )
        yield Counts(stage, kept, staged.count - distinct, skipped)
    except BaseException:
        # The transaction is aborted: its rollback drops the tables, and a DROP here would only
        # hide the error that aborted it.
        raise
    else:
        for name in [n for n, _ in staged.axis_tables] + [stage]:
            con.execute(f"DROP TABLE IF EXISTS temp.{name}")
