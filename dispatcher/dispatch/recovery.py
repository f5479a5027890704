"""Recovery glue the loop calls: persisted host suspensions, and the crash test hook.

``SuspensionSync`` mirrors the dispatcher's in-memory suspensions into the queue file (so
``status`` shows them and ``labtasker hosts resume`` can lift them from another terminal).
``crash_point`` is a test hook that kills the dispatcher at a precise moment, to prove that a
controller dying there loses nothing and launches nothing twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dispatcher.store.suspensions import resume_hosts, suspend_host, suspended_hosts
from dispatcher.store.txn import Txn

if TYPE_CHECKING:
    from dispatcher.dispatch.state import HostState, Log

#: Test hook: "1" (or "placed") exits right after the transaction that marks tasks ``launching``
#: commits, before any launch is sent; "sent" exits when the first launch reply arrives, before
#: it is recorded. Never set it outside tests.
CRASH_ENV = "LABTASKER_TEST_CRASH_AFTER_PLACE"
CRASH_EXIT_CODE = 99


def crash_point(stage: str) -> None:
    """Exit at once (no cleanup, like kill -9) when the crash hook names ``stage``."""
    wanted = os.environ.get(CRASH_ENV)
    if wanted and (wanted == stage or (wanted == "1" and stage == "placed")):
        os._exit(CRASH_EXIT_CODE)


class SuspensionSync:
    """Keeps ``HostState.suspended`` and the ``host_status`` table in step, once per tick."""

    def __init__(self) -> None:
        self._started = False
        self._written: set[str] = set()

    def unwritten(self, hosts: Mapping[str, HostState]) -> bool:
        """True before the first sync, or while a suspension is not yet in the queue file."""
        return not self._started or any(
            hs.suspended and name not in self._written for name, hs in hosts.items()
        )

    def sync(self, tx: Txn, hosts: Mapping[str, HostState], reporter: Log) -> None:
        """Write new suspensions; apply resumes made elsewhere (``labtasker hosts resume``).

        The first call lifts every suspension of these hosts: a restart of dispatch brings
        suspended hosts back, as documented.
        """
        if not self._started:
            self._started = True
            for name in resume_hosts(tx, list(hosts)):
                reporter.log(f"{name}: suspension lifted (dispatch restarted)", style="green")
        stored = suspended_hosts(tx)
        for name, hs in hosts.items():
            if hs.suspended and name not in self._written:
                suspend_host(tx, name, hs.suspended)
                self._written.add(name)
            elif name in self._written and name not in stored:
                self._written.discard(name)
                hs.suspended = None
                hs.failures.clear()
                reporter.log(f"{name}: resumed; placing tasks there again", style="green")
