"""The dispatcher's background jobs: host calls and hooks that run while the loop goes on.

``Jobs`` owns the set of running asyncio tasks: it starts them, wakes the loop when one ends,
reports a failed one (a ``DispatcherError``) as a warning and lets any other exception (a bug)
reach asyncio. The loop asks it whether jobs still run and cancels the rest when it stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from dispatcher.dispatch.state import Log
from dispatcher.errors import DispatcherError, ProtocolViolationError


class Jobs:
    """Runs coroutines as jobs; see the module docstring."""

    def __init__(self, reporter: Log, wake: asyncio.Event) -> None:
        self._reporter = reporter
        self._wake = wake
        self._jobs: set[asyncio.Task[Any]] = set()

    def __bool__(self) -> bool:
        """Whether a job still runs."""
        return bool(self._jobs)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` as a job; the loop wakes when it ends."""
        job: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._jobs.add(job)

        def done(j: asyncio.Task[Any]) -> None:
            self._jobs.discard(j)
            exc = None if j.cancelled() else j.exception()
            if exc is not None:
                if not isinstance(exc, DispatcherError):
                    raise exc  # a bug: let asyncio report it loudly
                if not isinstance(exc, ProtocolViolationError):  # the session says it, once
                    self._reporter.log(str(exc), style="yellow")
            self._wake.set()

        job.add_done_callback(done)

    def cancel(self) -> None:
        """Cancel every job still running (the loop is stopping)."""
        for job in list(self._jobs):
            job.cancel()
