"""The readiness and per-sweep throttle rules exist twice: in SQL (``pending_candidates``, which
picks what placement sees) and in Python (``core.deps.verdict``, the dependency rule the store
applies, and ``models.sweep_key``, the group the scheduler counts active tasks in). This test
holds the two equal on generated queues in real DuckDB files, with all three kinds of
dependency on tasks in every state."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core.deps import deps_of, verdict
from dispatcher.core.models import NewTask, Task, TaskState, sweep_key
from dispatcher.store.queue import Store

STATES = [s.value for s in TaskState]

task_spec = st.fixed_dictionaries(
    {
        "name": st.sampled_from([None, "a", "b"]),
        "priority": st.integers(-1, 1),
        "max_running": st.sampled_from([None, 1, 2]),
        "state": st.sampled_from(
            ["pending", "pending", "pending", "succeeded", "failed", "cancelled", "running"]
        ),
        "deps": st.lists(st.integers(0, 11), max_size=2),
        "deps_any": st.lists(st.integers(0, 11), max_size=2),
        "deps_failed": st.lists(st.integers(0, 11), max_size=1),
    }
)
queues = st.lists(st.lists(task_spec, min_size=1, max_size=4), min_size=1, max_size=4)


def expected(tasks: list[Task], limit: int) -> list[int]:
    """The rule as the docs state it, in plain Python over the rows."""
    states = {t.id: t.state for t in tasks}
    ready = [
        t
        for t in tasks
        if t.state is TaskState.PENDING
        and verdict(deps_of(t.after, t.after_any, t.after_failed), states).ready
    ]
    ready.sort(key=lambda t: (-t.priority, t.id))
    seen: dict[str, int] = {}
    chosen = []
    for t in ready:
        if t.max_running is None:
            chosen.append(t.id)
            continue
        key = sweep_key(t.name, t.batch)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= t.max_running:
            chosen.append(t.id)
    return chosen[:limit]


@settings(max_examples=40, deadline=None)
@given(queues, st.integers(1, 20))
def test_sql_candidates_follow_the_python_rule(
    adds: list[list[dict[str, Any]]], limit: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "q.duckdb", lock_timeout=10)
        states: dict[int, str] = {}
        next_id = 1
        for add in adds:
            news: list[NewTask] = []
            first = next_id
            for spec in add:
                deps, deps_any, deps_failed = (
                    tuple(d for d in spec[key] if isinstance(d, int) and 0 < d < first)
                    for key in ("deps", "deps_any", "deps_failed")
                )
                news.append(
                    NewTask(
                        args={"i": next_id},
                        template="run %{i}",
                        command=f"run {next_id}",
                        name=spec["name"],
                        priority=spec["priority"],
                        max_running=spec["max_running"],
                        after=deps,
                        after_any=deps_any,
                        after_failed=deps_failed,
                    )
                )
                states[next_id] = str(spec["state"])
                next_id += 1
            store.add(news)
        with store.transaction() as tx:
            for task_id, state in states.items():  # outcomes as a finished dispatch leaves them
                tx.con.execute("UPDATE tasks SET state = ? WHERE id = ?", [state, task_id])
        with store.transaction() as tx:
            rows = tx.tasks()
            got = [t.id for t in tx.pending_candidates(limit)]
        assert got == expected(rows, limit)
