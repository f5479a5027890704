"""Hosts ordered by their free units of one kind during a plan (``scheduler`` rule 4). Pure."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar


class _Ranked(Protocol):
    @property
    def rank(self) -> tuple[Any, ...]: ...


H = TypeVar("H", bound=_Ranked)


class FreePool(Generic[H]):
    """Hosts by most free units of one kind, then rank: a heap whose stale entries are skipped.

    Free units only shrink during a plan, so an entry is stale exactly when its count is higher
    than the host's; it is re-pushed with the current count when it reaches the top.
    """

    def __init__(self, hosts: list[H], free: Callable[[H], int]) -> None:
        self.free = free
        self.heap = [(-free(h), h.rank, h) for h in hosts if free(h) > 0]  # ranks are unique
        heapq.heapify(self.heap)

    def best(self) -> H | None:
        """The host with the most free units (then the lowest rank), or None if none is left."""
        while self.heap:
            count, _, host = self.heap[0]
            now = self.free(host)
            if -count == now:
                return host
            heapq.heappop(self.heap)
            if now > 0:
                heapq.heappush(self.heap, (-now, host.rank, host))
        return None

    def most(self) -> int:
        host = self.best()
        return 0 if host is None else self.free(host)
