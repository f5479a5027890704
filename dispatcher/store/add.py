"""Adding tasks in bulk: stage a batch, find duplicates by identity in SQL, insert in one statement.

Flat grids are rendered by DuckDB itself: Python quotes each axis value once, and a cross join of
small per-axis tables concatenates each point's command, args JSON and canonical args from those
pieces, exactly as Python would. Other argument groups are rendered in Python, staged through a
temporary CSV file when many. ``stage`` does no database access, so the store can render before
it takes the queue file's lock."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tempfile import TemporaryDirectory

from dispatcher.core.batch import ArgGroup, TaskBatch, check_settings, render
from dispatcher.core.deps import DepKind
from dispatcher.core.identity import canonical_args, canonical_member
from dispatcher.core.models import NewTask
from dispatcher.core.snapshot import NO_CODE, CodeRef
from dispatcher.core.sweep import Grid
from dispatcher.core.template import MISSING, Template, lookup
from dispatcher.errors import TaskNotFoundError, UsageError
from dispatcher.store.dedup import Counts, classified

__all__ = [
    "AddResult",
    "Staged",
    "TaskBatch",
    "check_settings",
    "insert",
    "stage_batch",
    "stage_tasks",
]

_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_TABLE_IDS = itertools.count()
#: Python-rendered batches larger than this go to DuckDB through a temporary CSV file.
_CSV_ROWS = 2000
#: An empty batch's one SELECT (no rows, the columns every source gives).
_NO_ROWS = "0::BIGINT AS idx, '' AS args, '' AS command, '' AS canon"
#: The columns every staged source selects, in this order.
STAGE_COLUMNS = (
    "idx, args, command, canon, template, name, priority, max_attempts, timeout, gpus, after,"
    " max_running, outputs, after_any, after_failed, gpu_memory, gpu_type, min_gpu_memory"
)


@dataclass(frozen=True)
class AddResult:
    """What an add did: the new ids (contiguous), those of them that duplicate a queued task,
    how many points were skipped as already queued, and how many repeated an earlier point."""

    ids: list[int]
    duplicates: list[int]
    skipped: int
    repeated: int = 0


@dataclass
class Staged:
    """Tasks ready for one INSERT: a SELECT of ``STAGE_COLUMNS`` and what it reads."""

    count: int
    sql: str
    params: list[Any]
    deps: dict[DepKind, set[int]]  # the tasks each kind of dependency names, to check
    axis_tables: list[tuple[str, list[list[Any]]]] = field(default_factory=list)
    tmpdir: TemporaryDirectory[str] | None = None
    #: A batch's points repeating an earlier point are dropped; a list of tasks is added whole.
    drop_repeats: bool = True

    def cleanup(self) -> None:
        """Remove the temporary CSV, if any (idempotent)."""
        if self.tmpdir is not None:
            self.tmpdir.cleanup()
            self.tmpdir = None


def stage_batch(batch: TaskBatch) -> Staged:
    """Render what Python must render (to a temporary CSV when many); no database access."""
    tpl = batch.check()
    total = len(batch)
    deps = {DepKind.AFTER: set(batch.after), DepKind.AFTER_ANY: set(batch.after_any)}
    staged = Staged(total, "", [], {**deps, DepKind.AFTER_FAILED: set(batch.after_failed)})
    selects: list[tuple[str, list[Any]]] = []
    python_groups: list[tuple[int, ArgGroup]] = []
    offset = 0
    for group in batch.groups:
        plan = _grid_plan(tpl, group, offset) if isinstance(group, Grid) else None
        if plan is not None:
            staged.axis_tables.extend(plan[0])
            selects.append(plan[1])
        else:
            python_groups.append((offset, group))
        offset += len(group)
    rows = (
        (k, _text(_encode_args(args, k), k), _text(command, k), canonical_args(args))
        for offset, group in python_groups
        for k, args, command in render(tpl, group, offset, total)
    )
    if sum(len(g) for _, g in python_groups) > _CSV_ROWS:
        selects.append(_csv_select(staged, rows))
    elif python_groups:
        # Few rows: list parameters beat a temporary file.
        columns: list[list[Any]] = [[], [], [], []]
        for row in rows:
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        selects.append(
            (
                "SELECT unnest(?::BIGINT[]) AS idx, unnest(?::VARCHAR[]) AS args,"
                " unnest(?::VARCHAR[]) AS command, unnest(?::VARCHAR[]) AS canon",
                columns,
            )
        )
    if not selects:
        selects.append((f"SELECT {_NO_ROWS} WHERE false", []))
    staged.sql = (
        "SELECT idx, args, command, canon, ?::VARCHAR AS template, ?::VARCHAR AS name,"
        " ?::BIGINT AS priority, ?::INTEGER AS max_attempts, ?::DOUBLE AS timeout,"
        " ?::INTEGER AS gpus, ?::BIGINT[] AS after, ?::INTEGER AS max_running,"
        " ?::VARCHAR[] AS outputs, ?::BIGINT[] AS after_any, ?::BIGINT[] AS after_failed,"
        " ?::BIGINT AS gpu_memory, ?::VARCHAR AS gpu_type, ?::BIGINT AS min_gpu_memory"
        " FROM (" + " UNION ALL ".join(sql for sql, _ in selects) + ")"
    )
    b = batch
    staged.params = [b.template, b.name, b.priority, b.max_attempts, b.timeout, b.gpus,
                     list(b.after), b.max_running, list(b.outputs), list(b.after_any),
                     list(b.after_failed), b.gpu_memory, b.gpu_type, b.min_gpu_memory,
                     *(p for _, ps in selects for p in ps)]  # fmt: skip
    return staged


def _csv_select(staged: Staged, rows: Iterable[tuple[int, str, str, str]]) -> tuple[str, list[Any]]:
    import csv
    import tempfile

    staged.tmpdir = tempfile.TemporaryDirectory(prefix="labtasker-add-")
    csv_path = Path(staged.tmpdir.name) / "tasks.csv"
    try:
        # Every field quoted, one newline convention: any text (CR, LF, "", commas) round-trips.
        with open(csv_path, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows(rows)
    except BaseException:
        staged.cleanup()  # a render error midway: leave no file behind
        raise
    return (
        "SELECT idx, args, command, canon FROM read_csv(?, header = false, auto_detect = false,"
        " columns = {'idx': 'BIGINT', 'args': 'VARCHAR', 'command': 'VARCHAR',"
        " 'canon': 'VARCHAR'},"
        " quote = '\"', escape = '\"', delim = ',', new_line = '\\n',"
        " allow_quoted_nulls = false, strict_mode = true)",
        [str(csv_path)],
    )


def stage_tasks(tasks: Sequence[NewTask]) -> Staged:
    """Stage fully formed tasks (each with its own settings) as one list-valued SELECT; all of
    them are added, repeats too (``Store.add``: the caller chose each task)."""
    cols: list[list[Any]] = [[] for _ in range(18)]
    deps: dict[DepKind, set[int]] = {kind: set() for kind in DepKind}
    for k, t in enumerate(tasks):
        check_settings(
            priority=t.priority,
            max_attempts=t.max_attempts,
            timeout=t.timeout,
            gpus=t.gpus,
            name=t.name,
            max_running=t.max_running,
            outputs=t.outputs,
            gpu_memory=t.gpu_memory,
            gpu_type=t.gpu_type,
            min_gpu_memory=t.min_gpu_memory,
        )
        if "\0" in t.command or "\0" in t.template:
            raise UsageError(f"task {k + 1}: its command contains a NUL character")
        args, command, template = _encode_args(t.args, k), t.command, t.template
        row = (k, _text(args, k), _text(command, k), canonical_args(t.args), _text(template, k),
               t.name, t.priority, t.max_attempts, t.timeout, t.gpus, list(t.after),
               t.max_running, list(t.outputs), list(t.after_any),
               list(t.after_failed), t.gpu_memory, t.gpu_type, t.min_gpu_memory)  # fmt: skip
        for c, value in enumerate(row):
            cols[c].append(value)
        for kind in DepKind:
            deps[kind].update(getattr(t, kind.value))
    types = ("BIGINT", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "BIGINT", "INTEGER",
             "DOUBLE", "INTEGER", "BIGINT[]", "INTEGER", "VARCHAR[]", "BIGINT[]",
             "BIGINT[]", "BIGINT", "VARCHAR", "BIGINT")  # fmt: skip
    names = STAGE_COLUMNS.split(", ")
    sql = "SELECT " + ", ".join(
        f"unnest(?::{t}[]) AS {n}" for t, n in zip(types, names, strict=True)
    )
    return Staged(len(tasks), sql, cols, deps, drop_repeats=False)


def _text(text: str, index: int) -> str:
    """``text`` if it can be stored (UTF-8); command lines can carry undecodable bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"task {index + 1}: its args or command hold bytes that are not valid UTF-8 text"
        ) from None
    return text


def _encode_args(args: Mapping[str, Any], index: int) -> str:
    try:
        return _ENCODE(args)
    except (TypeError, ValueError) as err:
        raise UsageError(f"task {index + 1}: args cannot be stored as JSON ({err})") from None


def _grid_plan(
    tpl: Template, grid: Grid, offset: int
) -> tuple[list[tuple[str, list[list[Any]]]], tuple[str, list[Any]]] | None:
    """SQL that renders a flat grid inside DuckDB, or None when Python must render it.

    Flat: every axis key is a distinct top-level name absent from the fixed args, and every
    placeholder names an axis key or is found in the fixed args. Each axis becomes a temporary
    table (c0: position, c1: its JSON members, c2...: its values quoted for each placeholder, then
    each key's canonical member), crossed in axis order.
    """
    names = [p[0] for paths, _ in grid.axes for p in paths]
    if not grid.axes or len(grid) == 0:
        return None
    if any(len(p) != 1 for paths, _ in grid.axes for p in paths):
        return None
    if len(set(names)) != len(names) or any(n in grid.fixed for n in names):
        return None
    axis_of = {p[0]: a for a, (paths, _) in enumerate(grid.axes) for p in paths}
    axis_words: list[list[int]] = [[] for _ in grid.axes]  # placeholder numbers per axis
    words: list[str | tuple[int, int]] = []  # a constant word, or (axis, word column)
    for k, key in enumerate(tpl.keys):
        if key in axis_of:
            a = axis_of[key]
            words.append((a, len(axis_words[a])))
            axis_words[a].append(k)
            continue
        value = lookup(grid.fixed, key, tuple(key.split(".")))
        if value is MISSING:
            return None  # Python rendering reports the missing key with the task's number
        words.append(_text(tpl.quote(k, value), offset))
    tables, canon_of = _axis_tables(tpl, grid, axis_words, offset)
    strides = [math.prod(len(r) for _, r in grid.axes[a + 1 :]) for a in range(len(grid.axes))]
    idx_sql = " + ".join(f"ax{a}.c0 * {s}" for a, s in enumerate(strides))
    fixed = _text(_encode_args(grid.fixed, offset)[1:-1], offset)
    members = (["?"] if fixed else []) + [f"ax{a}.c1" for a in range(len(tables))]
    params: list[Any] = [offset] + ([fixed] if fixed else [])
    pieces: list[str] = []
    for k, lit in enumerate(tpl.literals):
        _text(lit, offset)
        pieces.append("?")
        params.append(lit)
        if k < len(words):
            word = words[k]
            if isinstance(word, str):
                pieces.append("?")
                params.append(word)
            else:
                pieces.append(f"ax{word[0]}.c{2 + word[1]}")
    json_sql = f"'{{' || concat_ws(',', {', '.join(members)}) || '}}'"
    canon: list[str] = []
    for key in sorted({*grid.fixed, *canon_of}):
        if key in canon_of:
            canon.append(canon_of[key])
        else:
            canon.append("?")
            params.append(canonical_member(key, grid.fixed[key]))
    canon_sql = f"'{{' || concat_ws(',', {', '.join(canon)}) || '}}'"
    sql = (
        f"SELECT ? + {idx_sql} AS idx, {json_sql} AS args, concat({', '.join(pieces)}) AS command,"
        f" {canon_sql} AS canon FROM "
        + ", ".join(f"temp.{name} ax{a}" for a, (name, _) in enumerate(tables))
    )
    return tables, (sql, params)


def _axis_tables(
    tpl: Template, grid: Grid, axis_words: list[list[int]], offset: int
) -> tuple[list[tuple[str, list[list[Any]]]], dict[str, str]]:
    """Each axis's temporary table (see ``_grid_plan``), and each key's canonical member column."""
    tables: list[tuple[str, list[list[Any]]]] = []
    canon_of: dict[str, str] = {}
    for a, (paths, rows) in enumerate(grid.axes):
        keys = [p[0] for p in paths]
        n_words = len(axis_words[a])
        cols: list[list[Any]] = [list(range(len(rows))), []]
        cols += [[] for _ in range(n_words + len(keys))]
        for row in rows:
            point = dict(zip(keys, row, strict=True))
            cols[1].append(_text(_encode_args(point, offset)[1:-1], offset))
            for c, k in enumerate(axis_words[a]):
                cols[2 + c].append(_text(tpl.quote(k, point[tpl.keys[k]]), offset))
            for j, key in enumerate(keys):
                cols[2 + n_words + j].append(canonical_member(key, point[key]))
        canon_of.update({key: f"ax{a}.c{2 + n_words + j}" for j, key in enumerate(keys)})
        tables.append((f"labtasker_axis_{next(_TABLE_IDS)}", cols))
    return tables, canon_of


def missing_dependencies(kind: DepKind, ids: Sequence[int]) -> TaskNotFoundError:
    """The error for dependencies naming tasks that are not in the queue."""
    shown = ", ".join(str(i) for i in ids)
    return TaskNotFoundError(
        f"{kind.option} names {'task' if len(ids) == 1 else 'tasks'} {shown}, not in the queue;"
        " see `labtasker queue ls`"
    )


def refuse_dependencies_without_queue(path: Path, batch: TaskBatch) -> None:
    """Before ``queue add`` creates the queue at ``path``: a queue not there yet holds no task,
    so a batch naming dependencies is refused, and nothing (no directory, no snapshot) is made."""
    if path.exists():
        return
    for kind in DepKind:
        named = sorted(set(getattr(batch, kind.value)))
        if named:
            raise missing_dependencies(kind, named)


def insert(
    con: Any, staged: Staged, *, now: datetime, skip_existing: bool, code: CodeRef = NO_CODE
) -> AddResult:
    """Insert staged tasks as pending, in the caller's transaction, each recording ``code``
    (the project snapshot of the add).

    A batch's point with the same identity (``core/identity.py``) as an earlier one of this add
    is dropped (a list of tasks keeps it, ``stage_tasks``); one matching a pending, launching,
    running or succeeded task is added anyway (its id in ``duplicates``) or, with
    ``skip_existing``, left out.
    """
    for kind, named in staged.deps.items():
        if not named:
            continue
        # Checked before the new rows go in: a task can depend only on tasks already there,
        # so never on itself, and dependencies never form a cycle.
        missing = con.execute(
            "SELECT unnest(?::BIGINT[]) AS id EXCEPT SELECT id FROM tasks ORDER BY id",
            [sorted(named)],
        ).fetchall()
        if missing:
            raise missing_dependencies(kind, [r[0] for r in missing])
    if staged.count == 0:
        return AddResult([], [], 0)
    with classified(con, staged, skip_existing) as counts:
        return _insert(con, staged, counts, now=now, code=code)


def _insert(con: Any, staged: Staged, counts: Counts, *, now: datetime, code: CodeRef) -> AddResult:
    next_id = con.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()[0]
    con.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", [next_id + counts.kept])
    dups = con.execute(
        f"SELECT ? + pos FROM {counts.table} WHERE existing ORDER BY pos", [next_id]
    ).fetchall()
    con.execute(
        "INSERT INTO tasks (id, state, created_at, args, command, template, name, priority,"
        " max_attempts, timeout, gpus, after, max_running, outputs, after_any, after_failed,"
        " gpu_memory, gpu_type, min_gpu_memory, ident, batch, snapshot, git_commit, git_dirty)"
        " SELECT ? + k.pos, 'pending', ?::TIMESTAMP, s.args, s.command, s.template, s.name,"
        " s.priority, s.max_attempts, s.timeout, s.gpus, s.after, s.max_running, s.outputs,"
        " s.after_any, s.after_failed, s.gpu_memory, s.gpu_type, s.min_gpu_memory, k.ident,"
        " ?::BIGINT, ?::VARCHAR, ?::VARCHAR, ?::BOOLEAN"
        f" FROM ({staged.sql}) s JOIN {counts.table} k ON s.idx = k.idx",
        [next_id, now, next_id, code.snapshot, code.git_commit, code.git_dirty, *staged.params],
    )
    ids = list(range(next_id, next_id + counts.kept))
    return AddResult(ids, [r[0] for r in dups], counts.skipped, counts.repeated)
