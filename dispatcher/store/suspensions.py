"""Host suspensions in the queue file, so every process sees them (``status``, ``hosts resume``).

Owns the rows of the ``host_status`` table (made by the schema's migrations). All SQL runs on a
``Txn``'s connection, inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dispatcher.store.txn import Txn


@dataclass(frozen=True)
class Suspension:
    """One suspended host: when (naive UTC, as stored) and why."""

    host: str
    suspended_at: datetime
    reason: str


def suspended_hosts(tx: Txn) -> dict[str, Suspension]:
    """Every suspended host by name ({} when none ever was)."""
    rows = tx.con.execute(
        "SELECT host, suspended_at, reason FROM host_status ORDER BY host"
    ).fetchall()
    return {str(h): Suspension(str(h), at, str(r)) for h, at, r in rows}


def suspend_host(tx: Txn, host: str, reason: str) -> None:
    """Record ``host`` as suspended with ``reason`` (replacing an older record)."""
    tx.con.execute("DELETE FROM host_status WHERE host = ?", [host])
    tx.con.execute(
        "INSERT INTO host_status (host, suspended_at, reason) VALUES (?, ?, ?)",
        [host, tx.now(), reason],
    )


def resume_hosts(tx: Txn, hosts: list[str] | None = None) -> list[str]:
    """Lift the suspension of ``hosts`` (None: of every host); the names that were suspended."""
    current = suspended_hosts(tx)
    names = sorted(current) if hosts is None else [h for h in hosts if h in current]
    for name in names:
        tx.con.execute("DELETE FROM host_status WHERE host = ?", [name])
    return names
