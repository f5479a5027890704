"""The dashboard's reads of the queue, each a function of one open transaction returning plain
JSON-ready data: the overview's counts, a page of the queue table (filtered, sorted and paged in
DuckDB SQL, so a million-task queue answers as fast as a small one), a task with its attempts,
the timeline's bars, and the results table. Reads only; ``reader`` decides when they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dispatcher.core.models import ACTIVE_STATES, TaskState
from dispatcher.errors import UsageError
from dispatcher.store.schema import TASK_COLUMNS, task_from_row

if TYPE_CHECKING:
    from dispatcher.store.txn import Txn

#: Columns the queue table sorts by (anything else is refused: they are spliced into the SQL).
SORTABLE = (
    "id", "name", "state", "priority", "host", "attempt", "created_at", "started_at",
    "finished_at",
)  # fmt: skip
#: The most rows one page of the queue table holds.
MAX_PAGE = 500
#: The timeline shows at most this many finished attempts (the latest).
TIMELINE_ATTEMPTS = 5000
#: The results page reads at most this many rows.
RESULTS_ROWS = 20000


def _epoch(t: datetime | None) -> float | None:
    return None if t is None else t.replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class QueueQuery:
    """One page of the queue table: filters, sort and page as the page asked for them."""

    states: tuple[str, ...] = ()
    name: str = ""
    sweep: int | None = None
    text: str = ""
    sort: str = "id"
    desc: bool = False
    offset: int = 0
    limit: int = 50

    def __post_init__(self) -> None:
        if self.sort not in SORTABLE:
            raise UsageError(f"cannot sort by {self.sort!r}; sortable: {', '.join(SORTABLE)}")
        for s in self.states:
            if s not in {str(x) for x in TaskState}:
                raise UsageError(f"unknown state {s!r}")
        if not (0 < self.limit <= MAX_PAGE) or self.offset < 0:
            raise UsageError(f"a page holds 1 to {MAX_PAGE} rows from offset 0 on")


def _queue_where(q: QueueQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if q.states:
        clauses.append(f"state IN ({', '.join('?' * len(q.states))})")
        params.extend(q.states)
    if q.name:
        clauses.append("name ILIKE ?")
        params.append(f"%{q.name}%")
    if q.sweep is not None:
        clauses.append("batch = ?")
        params.append(q.sweep)
    if q.text:
        clauses.append("args ILIKE ?")
        params.append(f"%{q.text}%")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def queue_page(txn: Txn, q: QueueQuery) -> dict[str, Any]:
    """The tasks of one page and how many match in all; ids are chosen first (a top-N over one
    column), whole rows fetched only for them."""
    where, params = _queue_where(q)
    total = txn.con.execute(f"SELECT count(*) FROM tasks{where}", params).fetchone()[0]
    order = f"{q.sort} {'DESC' if q.desc else 'ASC'} NULLS LAST, id {'DESC' if q.desc else 'ASC'}"
    rows = txn.con.execute(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT id FROM tasks{where}"
        f" ORDER BY {order} LIMIT ? OFFSET ?) ORDER BY {order}",
        [*params, q.limit, q.offset],
    ).fetchall()
    return {"total": int(total), "tasks": [task_from_row(r).to_json() for r in rows]}


def overview(txn: Txn) -> dict[str, Any]:
    """Counts per state, the median runtime of succeeded tasks, and why pending ones wait."""
    counts = txn.counts()
    return {
        "counts": {str(k): v for k, v in counts.items()},
        "median_runtime": txn.median_runtime(),
        "pending_reasons": txn.pending_reasons(5) if counts[TaskState.PENDING] else [],
    }


def task_detail(txn: Txn, task_id: int) -> dict[str, Any]:
    """A task as ``queue show --json`` gives it, with its finished attempts."""
    task = txn.get(task_id)
    attempts = [
        {
            "attempt": a.attempt,
            "run_id": a.run_id,
            "host": a.host,
            "gpus": a.gpu_ids,
            "outcome": str(a.outcome),
            "exit_code": a.exit_code,
            "result": a.result,
            "started_at": _epoch(a.started_at),
            "finished_at": _epoch(a.finished_at),
            "reason": a.reason,
        }
        for a in txn.attempts(task_id)
    ]
    return {"task": task.to_json(), "attempts": attempts}


def timeline(txn: Txn) -> dict[str, Any]:
    """One bar per attempt: the latest finished ones, and the active tasks' current attempts."""
    bars: list[dict[str, Any]] = []
    for tid, attempt, host, gpus, outcome, start, end in txn.con.execute(
        "SELECT task_id, attempt, host, gpu_ids, outcome, started_at, finished_at FROM attempts"
        " WHERE host IS NOT NULL AND started_at IS NOT NULL"
        " ORDER BY finished_at DESC NULLS LAST LIMIT ?",
        [TIMELINE_ATTEMPTS],
    ).fetchall():
        bars.append(_bar(tid, attempt, host, gpus, outcome, start, end))
    active = [str(s) for s in ACTIVE_STATES]
    for tid, attempt, host, gpus, state, start in txn.con.execute(
        "SELECT id, attempt, host, gpu_ids, state, started_at FROM tasks WHERE state IN"
        f" ({', '.join('?' * len(active))}) AND host IS NOT NULL",
        active,
    ).fetchall():
        bars.append(_bar(tid, attempt, host, gpus, state, start or txn.now(), None))
    return {"bars": bars, "now": _epoch(txn.now())}


def _bar(
    tid: int, attempt: int, host: str, gpus: Any, state: str, start: Any, end: Any
) -> dict[str, Any]:
    return {
        "task": tid,
        "attempt": attempt,
        "host": host,
        "gpus": list(gpus or []),
        "state": state,
        "start": _epoch(start),
        "end": _epoch(end),
    }


def results_table(txn: Txn) -> dict[str, Any]:
    """The ``results`` rows of the finished tasks (args and metrics flattened), the first
    ``RESULTS_ROWS``, with the names of the arg and metric columns."""
    from dispatcher.store import results as res
    from dispatcher.store.selection import Selection

    states = [TaskState.SUCCEEDED, TaskState.FAILED]
    query = res.selected(txn.con, states, Selection(), now=txn.now())
    names, rows = res.fetch(txn.con, f"{query.rows} LIMIT {RESULTS_ROWS}")
    return {
        "columns": names,
        "rows": [[_plain(v) for v in row] for row in rows],
        "args": [n for n in names if n.startswith("args.")],
        "metrics": [n for n in names if n.startswith("result.")],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return _epoch(value)
    if isinstance(value, int | float | str | bool | list | dict) or value is None:
        return value
    return str(value)
