"""User edits that change no task's state (``queue update``, ``queue rm``) and the selection of
tasks by ids and states that every bulk operation starts with. Runs inside the caller's
transaction, on its connection; state changes stay in ``store.txn``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dispatcher.core.models import ACTIVE_STATES, TaskState
from dispatcher.errors import IllegalTransitionError, TaskNotFoundError, TemplateError, UsageError
from dispatcher.store.schema import dump_json

#: SQL condition: the task is among those ``select`` chose.
SELECTED = "id IN (SELECT id FROM temp.labtasker_sel)"


def sql_in(states: Iterable[TaskState]) -> str:
    """States as an SQL list of literals (enum values only, so no quoting issue)."""
    return ", ".join(f"'{TaskState(s).value}'" for s in sorted(set(states)))


def filters(
    states: Iterable[TaskState] | None,
    ids: Iterable[int] | None,
    host: str | None,
    after_id: int | None,
) -> tuple[str, list[Any]]:
    """A WHERE clause (or "") and its parameters for the filters given; all must hold."""
    clauses: list[str] = []
    params: list[Any] = []
    if states is not None:
        wanted = [TaskState(s) for s in states]
        clauses.append(f"state IN ({sql_in(wanted)})" if wanted else "false")
    if ids is not None:
        clauses.append("id IN (SELECT unnest(?::BIGINT[]))")
        params.append(list(ids))
    if host is not None:
        clauses.append("host = ?")
        params.append(host)
    if after_id is not None:
        clauses.append("id > ?")
        params.append(after_id)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def select(
    con: Any, path: Path, ids: Iterable[int] | None, states: Iterable[TaskState] | None
) -> None:
    """Put the chosen ids into temp.labtasker_sel (``SELECTED``); every given id must exist."""
    if ids is None and states is None:
        raise UsageError("name the tasks: give task ids or --state")
    id_list = None if ids is None else sorted(set(ids))
    if id_list is not None:
        missing = con.execute(
            "SELECT unnest(?::BIGINT[]) AS id EXCEPT SELECT id FROM tasks ORDER BY id", [id_list]
        ).fetchall()
        if missing:
            shown = ", ".join(str(r[0]) for r in missing[:10])
            raise TaskNotFoundError(
                f"{'task' if len(missing) == 1 else 'tasks'} {shown} not in the queue {path};"
                " see `labtasker queue ls`"
            )
    where, params = filters(states, id_list, None, None)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE labtasker_sel AS SELECT id FROM tasks{where}", params
    )


def refuse(con: Any, allowed: Iterable[TaskState], hint: str) -> None:
    """IllegalTransitionError naming the first selected task whose state is not ``allowed``."""
    row = con.execute(
        f"SELECT id, state FROM tasks WHERE {SELECTED} AND state NOT IN ({sql_in(allowed)})"
        " ORDER BY id LIMIT 1"
    ).fetchone()
    if row is not None:
        raise IllegalTransitionError(f"task {row[0]} is {row[1]}; {hint}")


def update(
    con: Any,
    path: Path,
    ids: Iterable[int],
    *,
    priority: int | None = None,
    args: Mapping[str, Any] | None = None,
    template: str | None = None,
    name: str | None = None,
    gpu_needs: Mapping[str, int | str | None] | None = None,
) -> list[int]:
    """Edit pending tasks: ``args`` are merged into each task's args, and the command is
    rendered again (a missing key is a TemplateError naming the task). ``gpu_needs`` sets
    ``gpu_memory``, ``gpu_type`` or ``min_gpu_memory`` (None clears one). Others are refused."""
    select(con, path, ids, None)
    refuse(con, {TaskState.PENDING}, "only pending tasks can be updated")
    if gpu_needs:
        _set_gpu_needs(con, gpu_needs)
    if priority is not None or name is not None:
        from dispatcher.store.add import check_settings

        check_settings(priority=priority or 0, max_attempts=1, timeout=None, gpus=None, name=name)
        sets = [(c, v) for c, v in (("priority", priority), ("name", name)) if v is not None]
        con.execute(
            f"UPDATE tasks SET {', '.join(f'{c} = ?' for c, _ in sets)} WHERE {SELECTED}",
            [v for _, v in sets],
        )
    if args is not None or template is not None:
        _rerender(con, args, template)
    rows = con.execute(f"SELECT id FROM tasks WHERE {SELECTED} ORDER BY id").fetchall()
    return [r[0] for r in rows]


GPU_NEEDS = ("gpu_memory", "gpu_type", "min_gpu_memory")


def _set_gpu_needs(con: Any, needs: Mapping[str, int | str | None]) -> None:
    """Set the chosen tasks' GPU needs; UsageError for a bad value or a task with ``gpus = 0``
    (a slot without a GPU can have no GPU needs), as ``queue add`` refuses them."""
    from dispatcher.core.batch import check_gpu_needs

    unknown = sorted(set(needs) - set(GPU_NEEDS))
    if unknown:
        raise UsageError(f"not a GPU need: {', '.join(unknown)} (one of {', '.join(GPU_NEEDS)})")
    memory, min_memory = needs.get("gpu_memory"), needs.get("min_gpu_memory")
    gpu_type = needs.get("gpu_type")
    if isinstance(memory, str) or isinstance(min_memory, str) or isinstance(gpu_type, int):
        raise UsageError("gpu_memory and min_gpu_memory are bytes, gpu_type a text")
    check_gpu_needs(None, memory, gpu_type, min_memory)
    sets = list(needs.items())
    con.execute(
        f"UPDATE tasks SET {', '.join(f'{c} = ?' for c, _ in sets)} WHERE {SELECTED}",
        [v for _, v in sets],
    )
    slot = con.execute(
        f"SELECT id FROM tasks WHERE {SELECTED} AND gpus = 0 AND (gpu_memory IS NOT NULL"
        " OR gpu_type IS NOT NULL OR min_gpu_memory IS NOT NULL) ORDER BY id LIMIT 1"
    ).fetchone()
    if slot is not None:
        raise UsageError(
            f"task {slot[0]} runs with --gpus 0 (a slot without a GPU) and can have no GPU needs"
        )


def _rerender(con: Any, args: Mapping[str, Any] | None, template: str | None) -> None:
    from dispatcher.core.sweep import merge
    from dispatcher.core.template import compile_template

    if template is not None:
        compile_template(template)  # a refused template is refused once, not per task
    from dispatcher.core.identity import IDENT_SQL, canonical_args

    columns: list[list[Any]] = [[], [], [], [], []]
    for task_id, old_args, old_template in con.execute(
        f"SELECT id, args, template FROM tasks WHERE {SELECTED} ORDER BY id"
    ).fetchall():
        merged = json.loads(old_args)
        if args is not None:
            merged = merge(merged, args)
        text = template if template is not None else old_template
        try:
            command = compile_template(text).render(merged)
            encoded = dump_json(merged)
        except TemplateError as err:
            raise TemplateError(f"task {task_id}: {err}") from None
        except (TypeError, ValueError) as err:
            raise UsageError(f"task {task_id}: args cannot be stored as JSON ({err})") from None
        row = (task_id, encoded, command, text, canonical_args(merged))
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    ident = IDENT_SQL.format(template="u.template", canon="u.canon")
    con.execute(
        "UPDATE tasks SET args = u.args, command = u.command, template = u.template,"
        f" ident = {ident} FROM"
        " (SELECT unnest(?::BIGINT[]) AS id, unnest(?::VARCHAR[]) AS args,"
        " unnest(?::VARCHAR[]) AS command, unnest(?::VARCHAR[]) AS template,"
        " unnest(?::VARCHAR[]) AS canon) u WHERE tasks.id = u.id",
        columns,
    )


def remove(
    con: Any, path: Path, ids: Iterable[int] | None, states: Iterable[TaskState] | None
) -> list[int]:
    """Delete the chosen tasks and their attempts. Launching/running tasks are refused, and so
    is a task another pending task waits for (any kind of dependency), unless that one goes
    too."""
    select(con, path, ids, states)
    refuse(con, set(TaskState) - ACTIVE_STATES, "cancel it first (`labtasker queue cancel ID`)")
    waiting = con.execute(
        "SELECT d.id, d.dep, d.kind FROM (SELECT id, unnest(after) AS dep, 'after' AS kind"
        " FROM tasks WHERE state = 'pending' UNION ALL SELECT id, unnest(after_any),"
        " 'after-any' FROM tasks WHERE state = 'pending' UNION ALL SELECT id,"
        " unnest(after_failed), 'after-failed' FROM tasks WHERE state = 'pending') d"
        " WHERE d.dep IN (SELECT id FROM temp.labtasker_sel)"
        " AND d.id NOT IN (SELECT id FROM temp.labtasker_sel) ORDER BY d.id LIMIT 1"
    ).fetchone()
    if waiting is not None:
        raise UsageError(
            f"task {waiting[1]} cannot be removed: pending task {waiting[0]} waits for it"
            f" (--{waiting[2]}); remove or cancel task {waiting[0]} too"
        )
    rows = con.execute(f"SELECT id FROM tasks WHERE {SELECTED} ORDER BY id").fetchall()
    con.execute(f"DELETE FROM attempts WHERE task_{SELECTED}")
    con.execute(f"DELETE FROM tasks WHERE {SELECTED}")
    return [r[0] for r in rows]
