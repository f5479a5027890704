"""Results as rows: one per task, args and result JSON flattened into ``args.KEY`` / ``result.KEY``
columns, and read-only SQL over the queue (the ``tasks`` and ``attempts`` views).

Everything here is SQL run inside the caller's store transaction (``Txn.con``): the key union comes
from DuckDB's JSON structure functions and the rows from ``->>`` extraction, never a Python loop
over tasks; exports use DuckDB's COPY. It never changes the queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatcher.core.models import TaskState
from dispatcher.errors import UsageError
from dispatcher.store.edit import sql_in
from dispatcher.store.schema import duckdb
from dispatcher.store.selection import Column, Query, Selection, build, quote_ident, quote_literal

if TYPE_CHECKING:
    from dispatcher.store.queue import Store

#: Formats ``export`` writes, by DuckDB COPY options.
COPY_FORMATS: Mapping[str, str] = {
    "csv": "FORMAT csv, HEADER true",
    "json": "FORMAT json, ARRAY true",
    "parquet": "FORMAT parquet",
}
#: The fixed columns of a results row, before the args.* and result.* ones.
BASE_COLUMNS = ("id", "name", "state", "host", "gpus", "runtime", "exit_code", "reason")
#: JSON structure types kept as typed columns; any other (mixed, arrays) stays JSON text.
_TYPED = frozenset({"BOOLEAN", "BIGINT", "UBIGINT", "HUGEINT", "DOUBLE", "VARCHAR"})
#: The views ``sql`` queries see; the table columns behind them keep their storage names.
VIEWS_SQL = (
    "CREATE TEMP VIEW tasks AS SELECT id, name, state, args::JSON AS args, template, command,"
    " priority, attempt, max_attempts, losses, timeout, gpus AS gpus_requested, host,"
    " gpu_ids AS gpus, run_id, exit_code, result::JSON AS result, created_at, started_at,"
    " finished_at, epoch(finished_at - started_at) AS runtime, reason, cancel_requested, after,"
    " after_any, after_failed, snapshot, git_commit, git_dirty, gpu_memory, gpu_type,"
    " min_gpu_memory FROM {db}.main.tasks",
    "CREATE TEMP VIEW attempts AS SELECT task_id, attempt, run_id, host, gpu_ids AS gpus,"
    " outcome, exit_code, result::JSON AS result, started_at, finished_at,"
    " epoch(finished_at - started_at) AS runtime, reason FROM {db}.main.attempts",
)


def _where(states: Iterable[TaskState] | None) -> str:
    if states is None:
        return ""
    wanted = list(states)
    return f" WHERE state IN ({sql_in(wanted)})" if wanted else " WHERE false"


def _structures(con: Any, where: str) -> tuple[Any, Any]:
    """The merged JSON structure of args and of result over the selected tasks.

    Grouping by each row's structure first leaves one representative per shape, so the costly
    structure merge runs over a handful of rows instead of every task.
    """
    row = con.execute(
        "SELECT json_group_structure(a), json_group_structure(r) FROM"
        " (SELECT any_value(args)::JSON AS a, any_value(result)::JSON AS r"
        f" FROM tasks{where} GROUP BY json_structure(args), json_structure(result))"
    ).fetchone()
    return tuple(None if text is None else json.loads(text) for text in row)  # type: ignore[return-value]


def _leaves(structure: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """(key path, DuckDB type) of every leaf; arrays and mixed types are leaves of type JSON."""
    if isinstance(structure, dict):
        for key, sub in structure.items():
            yield from _leaves(sub, (*path, key))
    elif path:
        yield (
            path,
            structure
            if isinstance(structure, str) and structure in _TYPED
            else ("VARCHAR" if structure == "NULL" else "JSON"),
        )


def _json_path(path: Sequence[str]) -> str:
    # Quoted steps, so keys holding dots, spaces or quotes address the right member.
    return "$" + "".join('."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"' for key in path)


def columns(con: Any, states: Iterable[TaskState] | None = None, *, now: datetime) -> list[Column]:
    """The results columns for the tasks in ``states`` (all when None), keys found by SQL.

    ``runtime`` is seconds from start to finish; for a task still running, to ``now``.
    """
    where = _where(states)
    stamp = quote_literal(now.isoformat(sep=" "))
    cols = [
        Column("id", "id"),
        Column("name", "name"),
        Column("state", "state"),
        Column("host", "host"),
        Column("gpus", "gpu_ids"),
        Column(
            "runtime",
            f"round(epoch(coalesce(finished_at, TIMESTAMP {stamp}) - started_at), 3)",
        ),
        Column("exit_code", "exit_code"),
        Column("reason", "reason"),
    ]
    # The code's columns appear once some task has a snapshot (tasks queued before have none).
    if con.execute(f"SELECT count(snapshot) > 0 FROM tasks{where}").fetchone()[0]:
        cols += [Column(n, n) for n in ("snapshot", "git_commit", "git_dirty")]
    seen = {c.name.lower() for c in cols}
    args_structure, result_structure = _structures(con, where)
    for source, structure in (("args", args_structure), ("result", result_structure)):
        for path, kind in _leaves(structure):
            name = ".".join((source, *path))
            # DuckDB column names ignore case; a clash (keys "a.b" and a: {b}) gets a suffix.
            unique, n = name, 1
            while unique.lower() in seen:
                n += 1
                unique = f"{name}#{n}"
            seen.add(unique.lower())
            target = quote_literal(_json_path(path))
            key = (source, *path)
            if kind == "JSON":
                cols.append(Column(unique, f"json_extract({source}, {target})", True, key))
            elif kind == "VARCHAR":
                cols.append(Column(unique, f"{source} ->> {target}", path=key))
            else:
                cols.append(Column(unique, f"TRY_CAST({source} ->> {target} AS {kind})", path=key))
    return cols


def select_sql(cols: Sequence[Column], states: Iterable[TaskState] | None = None) -> str:
    """The SELECT of ``cols`` over the tasks in ``states``, ordered by id; no parameters."""
    listed = ", ".join(f"{c.sql} AS {quote_ident(c.name)}" for c in cols)
    return f"SELECT {listed} FROM tasks{_where(states)} ORDER BY id"


def export(con: Any, query: str, fmt: str, dest: Path) -> None:
    """Write the rows of ``query`` to ``dest`` with DuckDB COPY in ``fmt`` (csv, json, parquet)."""
    if fmt not in COPY_FORMATS:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(COPY_FORMATS)}")
    try:
        con.execute(f"COPY ({query}) TO {quote_literal(str(dest))} ({COPY_FORMATS[fmt]})")
    except duckdb.Error as err:
        raise UsageError(f"cannot write {dest}: {_first_line(err)}") from None


def fetch(
    con: Any, query: str, *, limit: int | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of ``query`` (at most ``limit`` rows); JSON columns decoded."""
    cur = con.execute(query)
    names = [d[0] for d in cur.description]
    json_cols = [i for i, d in enumerate(cur.description) if str(d[1]).upper() == "JSON"]
    rows = cur.fetchall() if limit is None else cur.fetchmany(limit)
    if json_cols:
        rows = [_decode(row, json_cols) for row in rows]
    return names, rows


def _decode(row: tuple[Any, ...], json_cols: Sequence[int]) -> tuple[Any, ...]:
    out = list(row)
    for i in json_cols:
        if out[i] is not None:
            out[i] = json.loads(out[i])
    return tuple(out)


def open_views(con: Any) -> None:
    """Create the temp views ``tasks`` and ``attempts`` (args and result as JSON) that user SQL
    reads; they shadow the tables for this transaction only and vanish with its rollback."""
    db = quote_ident(con.execute("SELECT current_database()").fetchone()[0])
    for statement in VIEWS_SQL:
        con.execute(statement.format(db=db))


def check_read_only(con: Any, sql: str) -> str:
    """``sql`` if it is exactly one SELECT (WITH ... SELECT included); UsageError otherwise.

    DuckDB's own parser decides, so comments, case and CTEs cannot disguise a write. The caller
    still runs it in a transaction that is always rolled back: this check is the first guard.
    """
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise UsageError(f"SQL syntax error: {_first_line(err)}") from None
    if len(statements) != 1:
        raise UsageError(
            f"give exactly one SELECT statement (got {len(statements)});"
            " run several queries as separate `labtasker sql` calls"
        )
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind != "SELECT":
        raise UsageError(
            f"`labtasker sql` is read-only and refuses {kind} statements; only SELECT and"
            " WITH ... SELECT run (change tasks with `labtasker queue ...`)"
        )
    return sql


def run_query(con: Any, sql: str, *, limit: int | None = None) -> tuple[list[str], list[Any]]:
    """Run one read-only user query against the views; SQL errors become one-line UsageErrors."""
    check_read_only(con, sql)
    open_views(con)
    try:
        return fetch(con, sql, limit=limit)
    except duckdb.Error as err:
        raise UsageError(f"SQL error: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = lines[0] if lines else type(err).__name__
    # DuckDB puts the useful part on the next line after a bare "Binder Error:" header.
    if head.endswith(":") and len(lines) > 1:
        head = f"{head} {lines[1]}"
    return head


# Whole operations on a store, each one transaction.


def selected(
    con: Any, states: Iterable[TaskState] | None, sel: Selection, *, now: datetime
) -> Query:
    """The queries of ``sel`` over the tasks in ``states``; a ``--where`` that is not one plain
    condition, or that DuckDB cannot bind, is a one-line UsageError here, before any row is read."""
    query = build(columns(con, states, now=now), f"tasks{_where(states)}", sel)
    if sel.where is not None:
        if not sel.where.strip():
            raise UsageError("--where is empty; give a condition, e.g. --where 'result.acc > 0.9'")
        try:
            check_read_only(con, query.count)
        except UsageError as err:
            if str(err).startswith("SQL syntax error"):
                raise UsageError(f"--where {sel.where!r}: {err}") from None
            raise UsageError(
                f"--where {sel.where!r} is not one SQL condition; e.g. --where"
                " \"state = 'succeeded' AND args.lr < 0.1\""
            ) from None
    return query


def _counted(con: Any, query: Query, sel: Selection) -> int:
    """How many rows ``query`` selects; DuckDB's errors (a bad ``--where``) as one line."""
    try:
        return int(con.execute(query.count).fetchone()[0])
    except duckdb.Error as err:
        if sel.where is None:
            raise
        raise UsageError(f"--where {sel.where!r}: {_first_line(err)}") from None


def read(
    store: Store,
    states: Iterable[TaskState] | None = None,
    *,
    limit: int | None = None,
    sel: Selection | None = None,
) -> tuple[list[str], list[tuple[Any, ...]], int]:
    """Results rows (at most ``limit``), their column names, and how many rows match in all."""
    sel = sel or Selection()
    with store.transaction() as txn:
        query = selected(txn.con, states, sel, now=txn.now())
        total = _counted(txn.con, query, sel)
        rows = query.rows if limit is None else f"{query.rows} LIMIT {max(0, int(limit))}"
        try:
            names, found = fetch(txn.con, rows)
        except duckdb.Error as err:
            if sel.where is None:
                raise
            raise UsageError(f"--where {sel.where!r}: {_first_line(err)}") from None
    return names, found, total


def frame(
    store: Store, states: Iterable[TaskState] | None = None, sel: Selection | None = None
) -> Any:
    """Every matching task's results row as a pandas DataFrame (the caller checks for pandas)."""
    sel = sel or Selection()
    with store.transaction() as txn:
        query = selected(txn.con, states, sel, now=txn.now())
        _counted(txn.con, query, sel)
        return txn.con.execute(query.rows).df()


def write(
    store: Store,
    fmt: str,
    dest: Path,
    states: Iterable[TaskState] | None = None,
    sel: Selection | None = None,
) -> int:
    """Write every matching task's results row to ``dest`` in ``fmt``; returns the row count."""
    sel = sel or Selection()
    with store.transaction() as txn:
        query = selected(txn.con, states, sel, now=txn.now())
        total = _counted(txn.con, query, sel)
        export(txn.con, query.rows, fmt, dest)
        return total


class _Rollback(Exception):
    """Ends a read-only transaction: the store rolls back on any exception."""


def query(store: Store, sql: str, *, limit: int | None = None) -> tuple[list[str], list[Any]]:
    """Run one read-only SELECT over the ``tasks``/``attempts`` views; nothing is ever committed."""
    out: tuple[list[str], list[Any]] | None = None
    try:
        with store.transaction() as txn:
            out = run_query(txn.con, sql, limit=limit)
            raise _Rollback
    except _Rollback:
        pass
    assert out is not None
    return out
