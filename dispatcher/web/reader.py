"""The one door to the queue file for the dashboard: every read goes through ``Reader.read``,
which opens the file at most once a second (each open makes a busy dispatcher let go of it) and
answers from its cache while the file is unchanged (``QueueFile.change_token``) or the second is
not up. The live parts (running tasks' last lines, each host's GPUs) come from the status file the
dispatcher writes for ``status``, which never touches the queue.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.store.queue import Store
    from dispatcher.store.txn import Txn

#: The shortest time between two opens of the queue file, in seconds.
MIN_INTERVAL = 1.0
#: Answers kept (one per distinct page asked for), the least recently used dropped first.
CACHE_SIZE = 64


class Reader:
    """Reads of one queue, gated and cached; safe to call from many threads."""

    def __init__(self, store: Store, *, min_interval: float = MIN_INTERVAL) -> None:
        self.store = store
        self.min_interval = min_interval
        self.opens = 0  # how many times the queue file was opened (for tests and the bench)
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._cache: OrderedDict[Hashable, tuple[tuple[int, ...], Any]] = OrderedDict()

    def read(self, key: Hashable, fn: Callable[[Txn], Any]) -> Any:
        """``fn`` run in a transaction, or its cached answer for ``key``: the cached one while
        the file is unchanged, or while the last open is under a second old; with nothing
        cached, it waits for the second to pass."""
        with self._lock:
            token = self.store.change_token()
            hit = self._cache.get(key)
            if hit is not None and hit[0] == token:
                self._cache.move_to_end(key)
                return hit[1]
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0 and hit is not None:
                return hit[1]  # a little old: the next tick refreshes it
            if wait > 0:
                time.sleep(wait)
            try:
                with self.store.transaction() as txn:
                    value = fn(txn)
            finally:
                self._last = time.monotonic()
                self.opens += 1
            self._cache[key] = (token, value)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return value

    def forget(self) -> None:
        """Drop every cached answer (after a write made here)."""
        with self._lock:
            self._cache.clear()
