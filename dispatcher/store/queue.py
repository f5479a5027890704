"""The ``Store`` API: the queue file (``store.file.QueueFile``) and its operations that are each
one transaction (add, list, cancel, retry, update, remove). The names callers need from the
store's modules are here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dispatcher.core.models import NewTask, Task, TaskState
from dispatcher.store.file import QueueFile
from dispatcher.store.txn import Attempt, CancelResult, MoveRequest, Tally, Txn

if TYPE_CHECKING:
    from dispatcher.store.add import AddResult, TaskBatch

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

    def add(self, tasks: Sequence[NewTask], *, skip_existing: bool = False) -> AddResult:
        """Add fully formed tasks as pending; see ``Txn.add``."""
        from dispatcher.store.add import stage_tasks

        staged = stage_tasks(tasks)
        with self.transaction() as txn:
            return txn.insert(staged, skip_existing=skip_existing)

    def add_batch(self, batch: TaskBatch, *, skip_existing: bool = False) -> AddResult:
        """Render ``batch`` (before taking the lock), then add it in one transaction."""
        from dispatcher.store.add import stage_batch

        staged = stage_batch(batch)
        try:
            with self.transaction() as txn:
                return txn.insert(staged, skip_existing=skip_existing)
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
    ) -> list[int]:
        """Edit pending tasks; see ``Txn.update``."""
        with self.transaction() as txn:
            return txn.update(ids, priority=priority, args=args, template=template, name=name)

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
