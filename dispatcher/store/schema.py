"""The queue file's schema: tables, version number, forward migrations, and row <-> Task mapping.

``MIGRATIONS[v]`` upgrades a file from version ``v`` to ``v + 1``; version 0 is an empty DuckDB
file. Timestamps are stored as naive UTC ``TIMESTAMP`` and returned with ``tzinfo=UTC``; args and
results are JSON text. Called only by the store, inside its transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dispatcher.core.models import Task, TaskState
from dispatcher.errors import StoreError, StoreVersionError

try:
    # The C core alone. ``import duckdb`` also loads duckdb's Python relational API, which the
    # store never uses and which costs about 70 ms at every CLI start.
    import _duckdb as duckdb
except ImportError:  # another packaging of duckdb: the public module has the same names
    import duckdb  # type: ignore[no-redef]

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TASK_COLUMNS",
    "duckdb",
    "dump_json",
    "from_db_time",
    "migrate",
    "schema_version",
    "task_from_row",
    "to_db_time",
]

_TASKS = """
CREATE TABLE tasks (
    id BIGINT PRIMARY KEY,
    name VARCHAR,
    state VARCHAR NOT NULL,
    args VARCHAR NOT NULL,
    template VARCHAR NOT NULL,
    command VARCHAR NOT NULL,
    priority BIGINT NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    attempt INTEGER NOT NULL DEFAULT 0,
    losses INTEGER NOT NULL DEFAULT 0,
    timeout DOUBLE,
    gpus INTEGER,
    host VARCHAR,
    gpu_ids INTEGER[],
    run_id VARCHAR,
    exit_code INTEGER,
    result VARCHAR,
    created_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    reason VARCHAR,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    after BIGINT[] NOT NULL DEFAULT []
)"""

# No index besides the primary key: DuckDB scans a million-row state column in milliseconds, and
# an index on a column that changes on every move would only slow the writers down.
_ATTEMPTS = """
CREATE TABLE attempts (
    task_id BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    run_id VARCHAR,
    host VARCHAR,
    gpu_ids INTEGER[],
    outcome VARCHAR NOT NULL,
    exit_code INTEGER,
    result VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    reason VARCHAR
)"""

_META = "CREATE TABLE meta (key VARCHAR PRIMARY KEY, value BIGINT NOT NULL)"

#: One list of statements per step; never edit a released step, append a new one. A statement
#: ``python:NAME`` runs the function NAME of this module on the connection instead.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        _META,
        _TASKS,
        _ATTEMPTS,
        "INSERT INTO meta VALUES ('schema_version', 0), ('next_id', 1)",
    ),
    # 1 -> 2: per-sweep throttle (batch: the first id of the add; max_running) and declared
    # outputs. Existing tasks become batches of one, with no limit and no outputs.
    (
        "ALTER TABLE tasks ADD COLUMN batch BIGINT",
        "ALTER TABLE tasks ADD COLUMN max_running INTEGER",
        "ALTER TABLE tasks ADD COLUMN outputs VARCHAR[] NOT NULL DEFAULT []",
        "UPDATE tasks SET batch = id",
    ),
    # 2 -> 3: the queue's random id, which names it to the hosts' helpers (their launch fence);
    # host suspensions (version 2 made the table on its first suspension, if ever).
    (
        "INSERT INTO meta SELECT 'queue_id',"
        " CAST(floor(random() * 4503599627370496) AS BIGINT) + 1",
        "CREATE TABLE IF NOT EXISTS host_status (host VARCHAR PRIMARY KEY,"
        " suspended_at TIMESTAMP NOT NULL, reason VARCHAR NOT NULL)",
    ),
    # 3 -> 4: the other two kinds of dependency (core.deps), and which dependency's outcome
    # cancelled a task (so that retrying that one brings it back).
    (
        "ALTER TABLE tasks ADD COLUMN after_any BIGINT[] NOT NULL DEFAULT []",
        "ALTER TABLE tasks ADD COLUMN after_failed BIGINT[] NOT NULL DEFAULT []",
        "ALTER TABLE tasks ADD COLUMN cancelled_by BIGINT",
    ),
    # 4 -> 5: each task's identity (core/identity.py), which duplicates are found by.
    ("ALTER TABLE tasks ADD COLUMN ident UHUGEINT", "python:fill_idents"),
    # 5 -> 6: the code a task was queued with: its project snapshot's id, git commit and dirty
    # flag. Tasks added before have none.
    (
        "ALTER TABLE tasks ADD COLUMN snapshot VARCHAR",
        "ALTER TABLE tasks ADD COLUMN git_commit VARCHAR",
        "ALTER TABLE tasks ADD COLUMN git_dirty BOOLEAN",
    ),
    # 6 -> 7: GPU needs: memory per GPU (the task may share its GPUs), card type, card size.
    (
        "ALTER TABLE tasks ADD COLUMN gpu_memory BIGINT",
        "ALTER TABLE tasks ADD COLUMN gpu_type VARCHAR",
        "ALTER TABLE tasks ADD COLUMN min_gpu_memory BIGINT",
    ),
    # 7 -> 8: the SLURM job (array element, "1234_5") of a task running on a cluster.
    ("ALTER TABLE tasks ADD COLUMN job_id VARCHAR",),
)
SCHEMA_VERSION = len(MIGRATIONS)

TASK_COLUMNS = (
    "id, state, args, template, command, name, priority, max_attempts, attempt, losses, timeout,"
    " gpus, host, gpu_ids, run_id, exit_code, result, created_at, started_at, finished_at,"
    " reason, cancel_requested, after, batch, max_running, outputs, after_any, after_failed,"
    " cancelled_by, snapshot, git_commit, git_dirty, gpu_memory, gpu_type, min_gpu_memory,"
    " job_id"
)


def schema_version(con: Any, alias: str, path: Path) -> int:
    """The file's schema version; 0 for an empty database; StoreError for a foreign one."""
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:
        row = None  # no meta table: an empty file, or somebody else's database
    if row is not None:
        return int(row[0])
    others = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ?", [alias]
    ).fetchone()[0]
    if others:
        raise StoreError(
            f"{path} is a DuckDB database but not a labtasker queue (it has other tables);"
            " choose another file with --db or LABTASKER_DB"
        )
    return 0


def migrate(con: Any, alias: str, path: Path) -> None:
    """Bring the attached file up to ``SCHEMA_VERSION`` in one transaction; refuse newer files."""
    version = schema_version(con, alias, path)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"{path} has queue schema version {version}, written by a newer labtasker"
            f" (this one knows up to {SCHEMA_VERSION}); upgrade labtasker to use this queue"
        )
    con.execute("BEGIN")
    try:
        for step in MIGRATIONS[version:]:
            for statement in step:
                if statement.startswith("python:"):
                    globals()[statement.removeprefix("python:")](con)
                else:
                    con.execute(statement)
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [SCHEMA_VERSION])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def fill_idents(con: Any) -> None:
    """Compute ``ident`` for every task (a file from before identities): one bulk update."""
    from dispatcher.core.identity import IDENT_SQL, canonical_args

    ids, canon = [], []
    for task_id, args in con.execute("SELECT id, args FROM tasks").fetchall():
        ids.append(task_id)
        canon.append(canonical_args(json.loads(args)))
    ident = IDENT_SQL.format(template="tasks.template", canon="u.canon")
    con.execute(
        f"UPDATE tasks SET ident = {ident} FROM (SELECT unnest(?::BIGINT[]) AS id,"
        " unnest(?::VARCHAR[]) AS canon) u WHERE tasks.id = u.id",
        [ids, canon],
    )


def to_db_time(t: datetime | None) -> datetime | None:
    """A naive UTC datetime for storage; naive input is taken to be UTC already."""
    if t is None or t.tzinfo is None:
        return t
    return t.astimezone(UTC).replace(tzinfo=None)


def from_db_time(t: datetime | None) -> datetime | None:
    """A stored naive UTC datetime as an aware one."""
    return None if t is None else t.replace(tzinfo=UTC)


def dump_json(value: Any, *, allow_nan: bool = False) -> str | None:
    """Compact JSON text for storage (None stays NULL). Args are strict JSON; a task's result
    may hold NaN (a diverged loss is worth recording), which Python's json reads back."""
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan)


def task_from_row(row: Sequence[Any]) -> Task:
    """Build a Task from a row selected with ``TASK_COLUMNS``."""
    return Task(
        id=row[0],
        state=TaskState(row[1]),
        args=json.loads(row[2]),
        template=row[3],
        command=row[4],
        name=row[5],
        priority=row[6],
        max_attempts=row[7],
        attempt=row[8],
        losses=row[9],
        timeout=row[10],
        gpus=row[11],
        host=row[12],
        gpu_ids=row[13],
        run_id=row[14],
        exit_code=row[15],
        result=None if row[16] is None else json.loads(row[16]),
        created_at=from_db_time(row[17]),
        started_at=from_db_time(row[18]),
        finished_at=from_db_time(row[19]),
        reason=row[20],
        cancel_requested=row[21],
        after=row[22],
        batch=row[23],
        max_running=row[24],
        outputs=tuple(row[25] or ()),
        after_any=row[26],
        after_failed=row[27],
        cancelled_by=row[28],
        snapshot=row[29],
        git_commit=row[30],
        git_dirty=row[31],
        gpu_memory=row[32],
        gpu_type=row[33],
        min_gpu_memory=row[34],
        job_id=row[35],
    )
