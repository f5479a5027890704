"""The ``Store`` API: the queue file (``store.file.QueueFile``) and its operations that are each
one transaction (add, list, cancel, retry, update, remove). The names callers need from the
store's modules are here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dispatcher.core.models import NewTask, Task, TaskState
from dispatcher.core.snapshot import NO_CODE, CodeRef
from dispatcher.store.file import QueueFile
from dispatcher.store.txn import Attempt, CancelResult, MoveRequest, Tally, Txn

if TYPE_CHECKING:
    from dispatcher.store.add import AddResult, Staged, TaskBatch
    from dispatcher.store.dedup import Preview

__all__ = [
    "AddResult",
    "Attempt",
    "CancelResult",
    "MoveRequest",
    "Store",
    "Tally",
    "TaskBatch",
    "Txn",
]


class Store(QueueFile):
    """The queue file at ``path``; each method (or ``transaction`` block) opens and closes it."""

    def add(
        self, tasks: Sequence[NewTask], *, skip_existing: bool = False, code: CodeRef = NO_CODE
    ) -> AddResult:
        """Add fully formed tasks as pending, each recording ``code``; see ``Txn.add``."""
        from dispatcher.store.add import stage_tasks

        staged = stage_tasks(tasks)
        with self.transaction() as txn:
            return txn.insert(staged, skip_existing=skip_existing, code=code)

    def add_batch(
        self, batch: TaskBatch, *, skip_existing: bool = False, code: CodeRef = NO_CODE
    ) -> AddResult:
        """Render ``batch`` (before taking the lock), then add it in one transaction; each task
        records ``code`` (the project snapshot taken for this add)."""
        from dispatcher.store.add import stage_batch

        staged = stage_batch(batch)
        try:
            return self.add_staged(staged, skip_existing=skip_existing, code=code)
        finally:
            staged.cleanup()

    def add_staged(
        self, staged: Staged, *, skip_existing: bool = False, code: CodeRef = NO_CODE
    ) -> AddResult:
        """Add tasks rendered by ``store.add.stage_batch`` in one transaction (the caller
        cleans ``staged`` up); each task records ``code``."""
        with self.transaction() as txn:
            return txn.insert(staged, skip_existing=skip_existing, code=code)

    def snapshots(self, *, unfinished: bool = False) -> set[str]:
        """The snapshot ids some task in the queue refers to (any state; ``unfinished``: only
        tasks not succeeded, failed or cancelled, whose snapshot a host still needs)."""
        sql = "SELECT DISTINCT snapshot FROM tasks WHERE snapshot IS NOT NULL"
        if unfinished:
            sql += " AND state NOT IN ('succeeded', 'failed', 'cancelled')"
        with self.transaction() as txn:
            rows = txn.con.execute(sql).fetchall()
        return {r[0] for r in rows}

    def preview_batch(self, batch: TaskBatch, *, skip_existing: bool = False) -> Preview:
        """What ``add_batch`` would do, writing nothing: the queue is read only for
        ``skip_existing`` and only when its file exists (it is never created)."""
        from dispatcher.store.add import stage_batch
        from dispatcher.store.dedup import preview
        from dispatcher.store.schema import duckdb

        staged = stage_batch(batch)
        try:
            if skip_existing and self.path.exists():
                with self.transaction() as txn:
                    return preview(txn.con, staged, skip_existing=True)
            con = duckdb.connect()
            try:
                con.execute("CREATE TABLE tasks (id BIGINT, state VARCHAR, ident UHUGEINT)")
                return preview(con, staged, skip_existing=False)
            finally:
                con.close()
        finally:
            staged.cleanup()

    def tasks(
        self,
        *,
        states: Iterable[TaskState] | None = None,
        ids: Iterable[int] | None = None,
        host: str | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        """Tasks matching every filter given, ordered by id."""
        with self.transaction() as txn:
            return txn.tasks(states=states, ids=ids, host=host, limit=limit)

    def get(self, task_id: int) -> Task:
        """One task; TaskNotFoundError if absent."""
        with self.transaction() as txn:
            return txn.get(task_id)

    def queue_id(self) -> int:
        """The queue's random id (made with the file): it tells this queue's helpers apart."""
        with self.transaction() as txn:
            row = txn.con.execute("SELECT value FROM meta WHERE key = 'queue_id'").fetchone()
        return int(row[0])

    def counts(self) -> dict[TaskState, int]:
        """How many tasks are in each state (every state present)."""
        with self.transaction() as txn:
            return txn.counts()

    def cancel(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> CancelResult:
        """Cancel pending tasks, flag active ones for the dispatcher; see ``Txn.request_cancel``."""
        with self.transaction() as txn:
            return txn.request_cancel(ids, states=states)

    def retry(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> list[int]:
        """Send failed, cancelled or lost tasks back to pending; see ``Txn.retry``."""
        with self.transaction() as txn:
            return txn.retry(ids, states=states)

    def update(
        self,
        ids: Iterable[int],
        *,
        priority: int | None = None,
        args: Mapping[str, Any] | None = None,
        template: str | None = None,
        name: str | None = None,
        gpu_needs: Mapping[str, int | str | None] | None = None,
    ) -> list[int]:
        """Edit pending tasks; see ``Txn.update``."""
        with self.transaction() as txn:
            return txn.update(ids, priority=priority, args=args, template=template, name=name,
                              gpu_needs=gpu_needs)  # fmt: skip

    def remove(
        self, ids: Iterable[int] | None = None, *, states: Iterable[TaskState] | None = None
    ) -> list[int]:
        """Delete tasks that are not launching or running; see ``Txn.remove``."""
        with self.transaction() as txn:
            return txn.remove(ids, states=states)


def __getattr__(name: str) -> Any:
    # AddResult and TaskBatch load with the add machinery, which read-only commands never need.
    if name in ("AddResult", "TaskBatch"):
        from dispatcher.store import add as store_add

        return getattr(store_add, name)
    raise AttributeError(name)
