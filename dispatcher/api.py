"""The Python API: ``Queue``, the same queue the ``labtasker`` CLI uses, from a script or notebook.

A thin layer over the store (each call is one short transaction, so a running dispatcher and the
CLI can use the queue at the same time) and over ``store.results``. Dispatching stays with
``labtasker dispatch``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatcher.core.models import TaskState, parse_state
from dispatcher.errors import UsageError

if TYPE_CHECKING:
    from dispatcher.store.queue import Store

__all__ = ["Queue"]

States = str | TaskState | Iterable[str | TaskState] | None


def _states(state: States) -> list[TaskState] | None:
    if state is None:
        return None
    if isinstance(state, str):  # TaskState is a str too
        return [parse_state(state)]
    return [parse_state(s) for s in state]


class Queue:
    """A labtasker queue file.

    ``Queue()`` opens the queue the CLI uses here ($LABTASKER_DB, else the nearest
    ``.labtasker/queue.duckdb`` in the current directory or above it, resolved now);
    ``Queue(db=path)`` opens another. Only ``add`` creates a missing queue (in the current
    directory when none was found); every other method raises NoQueueError there. Every method
    is one transaction on the file.

    >>> q = Queue()
    >>> ids = q.add("python train.py --lr %{lr} --seed %{seed}", grid={"lr": [0.1, 0.01],
    ...                                                                "seed": [1, 2, 3]})
    """

    def __init__(self, db: str | os.PathLike[str] | None = None) -> None:
        from dispatcher.config.paths import locate_db
        from dispatcher.store.queue import Store

        path, looked_in = locate_db(None if db is None else Path(db))
        self._store: Store = Store(path, create=False)
        self._store.looked_in = looked_in

    @property
    def path(self) -> Path:
        """The queue file's absolute path."""
        return self._store.path

    @property
    def store(self) -> Store:
        """The underlying store, for what this API does not cover."""
        return self._store

    def __repr__(self) -> str:
        return f"Queue(db={str(self.path)!r})"

    def add(
        self,
        cmd: str,
        *,
        args: Sequence[Mapping[str, Any]] | None = None,
        grid: Mapping[str, Any] | None = None,
        name: str | None = None,
        priority: int = 0,
        max_attempts: int = 1,
        timeout: float | str | None = None,
        gpus: int | None = None,
        after: Sequence[int] = (),
        after_any: Sequence[int] = (),
        after_failed: Sequence[int] = (),
        skip_existing: bool = False,
        random: Mapping[str, Any] | None = None,
        samples: int | None = None,
        seed: int = 0,
        max_running: int | None = None,
        outputs: Sequence[str] = (),
        hosts: str | os.PathLike[str] | None = None,
        gpu_memory: int | str | None = None,
        gpu_type: str | None = None,
        min_gpu_memory: int | str | None = None,
    ) -> list[int]:
        """Add tasks running ``cmd`` (a template with ``%{key}`` placeholders); the new ids.

        As with ``labtasker queue add``: one task per point of ``grid`` (keys crossed, the last
        varying fastest; dotted keys nest) crossed with ``samples`` random points of ``random``
        (``{"lr": {"loguniform": [1e-5, 0.1]}}``; also uniform, randint, choice; reproducible
        from ``seed``). With points, each dict of ``args`` is merged into every point (the
        points once per dict; a key also set by the points raises SweepError); without, each
        dict is one task; neither gives one task with no args. A point repeating an earlier
        one is dropped. ``max_running`` caps how many of these tasks (of this ``name``) run at
        once; ``outputs`` are globs copied back after each run. ``gpu_memory`` (bytes or "10GiB",
        per GPU) lets the task share GPUs; ``gpu_type`` ("A100|H100") and ``min_gpu_memory`` limit
        the cards it may take; needs that no GPU of ``hosts`` could ever meet raise UsageError,
        as ``queue add`` refuses them. ``skip_existing`` leaves out
        tasks with the same template and args as a pending, running or succeeded one.
        Dependencies name existing tasks: these start only after every task of ``after``
        succeeded, of ``after_any`` ended (any outcome) and of ``after_failed`` failed or was
        cancelled (final outcomes: a failure with attempts left still waits); a condition that
        can no longer hold cancels them ("dependency 5 failed"), and retrying task 5 brings
        them back. Errors (bad template, missing key, unknown dependency) raise before anything
        is added. The project is snapshotted as by ``queue add``, shaped by the [sync] table of
        ``hosts`` (default: as ``queue add``'s ``--hosts``).
        """
        from dispatcher.config.paths import resolve_db_path
        from dispatcher.core import sampling
        from dispatcher.core.batch import assemble
        from dispatcher.core.sweep import grid_from_mapping
        from dispatcher.dispatch.fleet import refuse_impossible_gpu_needs
        from dispatcher.snapshot.take import add_with_snapshot
        from dispatcher.store.add import refuse_dependencies_without_queue
        from dispatcher.store.queue import Store

        if not isinstance(cmd, str) or not cmd.strip():
            raise UsageError(f"cmd must be a non-empty command template, got {cmd!r}")
        batch = assemble(
            cmd,
            args=args,
            grid=None if grid is None else grid_from_mapping(grid),
            random=None if random is None else sampling.from_mapping(random, samples, seed),
            name=name,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            gpus=gpus,
            max_running=max_running,
            outputs=outputs,
            after=after,
            after_any=after_any,
            after_failed=after_failed,
            gpu_memory=gpu_memory,
            gpu_type=gpu_type,
            min_gpu_memory=min_gpu_memory,
        )
        refuse_dependencies_without_queue(resolve_db_path(self.path), batch)
        creating = Store.open_default(self.path, create=True)  # the one call that may create
        hosts_path = None if hosts is None else Path(hosts)
        refuse_impossible_gpu_needs(batch, creating.path, hosts_path)  # as `queue add` does
        added, _ = add_with_snapshot(
            creating, batch, hosts_path=hosts_path, skip_existing=skip_existing
        )
        return added.ids

    def tasks(
        self, state: States = None, *, ids: Iterable[int] | None = None
    ) -> list[dict[str, Any]]:
        """Tasks as dicts (the ``queue ls --json`` shape), oldest first; filter by state(s)/ids."""
        found = self._store.tasks(states=_states(state), ids=None if ids is None else list(ids))
        return [t.to_json() for t in found]

    def cancel(self, ids: Iterable[int] | None = None, *, state: States = None) -> list[int]:
        """Cancel tasks: pending ones now, running ones by the dispatcher (which stops them).

        Returns the ids cancelled or marked for stopping; finished tasks are left alone. Tasks
        that wait ``after`` a cancelled one are cancelled too ("dependency 5 cancelled").
        """
        result = self._store.cancel(None if ids is None else list(ids), states=_states(state))
        return sorted(result.cancelled + result.requested)

    def retry(
        self, ids: Iterable[int] | None = None, *, failed: bool = False, state: States = None
    ) -> list[int]:
        """Send failed, cancelled or lost tasks back to pending; the ids moved.

        ``failed=True`` retries every failed task; ``state`` names other states to retry. The
        tasks that their outcome cancelled (dependencies) come back too, and are in the ids.
        """
        states = _states(state) or []
        if failed:
            states.append(TaskState.FAILED)
        if ids is None and not states:
            raise UsageError("name the tasks to retry: retry(ids), retry(failed=True) or state=")
        return self._store.retry(None if ids is None else list(ids), states=states or None)

    def results(
        self,
        state: States = None,
        *,
        columns: str | None = None,
        sort: str | None = None,
        where: str | None = None,
    ) -> list[dict[str, Any]]:
        """One dict per task, as ``labtasker results`` prints: id, name, state, host, gpus,
        runtime, exit_code, then ``args.KEY`` and ``result.KEY`` (nested keys joined by dots).
        ``columns``, ``sort`` and ``where`` are those of ``labtasker results``."""
        from dispatcher.store import results
        from dispatcher.store.selection import Selection

        sel = Selection(columns, sort, where)
        names, rows, _ = results.read(self._store, _states(state), sel=sel)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def results_df(
        self,
        state: States = None,
        *,
        columns: str | None = None,
        sort: str | None = None,
        where: str | None = None,
    ) -> Any:
        """``results`` as a pandas DataFrame (needs pandas). Nested values (lists, mixed types)
        are JSON text in the frame."""
        if importlib.util.find_spec("pandas") is None:
            raise ImportError(
                "Queue.results_df() needs pandas, which is not installed: `pip install pandas`,"
                " or use Queue.results() for a list of dicts"
            )
        from dispatcher.store import results
        from dispatcher.store.selection import Selection

        return results.frame(self._store, _states(state), Selection(columns, sort, where))

    def sql(self, query: str) -> list[dict[str, Any]]:
        """Rows of one read-only SELECT over the ``tasks`` and ``attempts`` views, as dicts."""
        from dispatcher.store import results

        names, rows = results.query(self._store, query)
        return [dict(zip(names, row, strict=True)) for row in rows]
