"""Host suspensions in the queue file, so every process sees them (``status``, ``hosts resume``).

Owns the ``host_status`` table (created on first write with CREATE TABLE IF NOT EXISTS; readers
treat a missing table as "nothing suspended" and never write). All SQL runs on a ``Txn``'s
connection, inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dispatcher.store_txn import Txn

_CREATE = """
CREATE TABLE IF NOT EXISTS host_status (
    host VARCHAR PRIMARY KEY,
    suspended_at TIMESTAMP NOT NULL,
    reason VARCHAR NOT NULL
)
"""


@dataclass(frozen=True)
class Suspension:
    """One suspended host: when (naive UTC, as stored) and why."""

    host: str
    suspended_at: datetime
    reason: str


def _exists(tx: Txn) -> bool:
    row = tx.con.execute(
        "SELECT count(*) FROM duckdb_tables() "
        "WHERE table_name = 'host_status' AND database_name = current_database()"
    ).fetchone()
    return bool(row and row[0])


def suspended_hosts(tx: Txn) -> dict[str, Suspension]:
    """Every suspended host by name ({} when none ever was)."""
    if not _exists(tx):
        return {}
    rows = tx.con.execute(
        "SELECT host, suspended_at, reason FROM host_status ORDER BY host"
    ).fetchall()
    return {str(h): Suspension(str(h), at, str(r)) for h, at, r in rows}


def suspend_host(tx: Txn, host: str, reason: str) -> None:
    """Record ``host`` as suspended with ``reason`` (replacing an older record)."""
    tx.con.execute(_CREATE)
    tx.con.execute("DELETE FROM host_status WHERE host = ?", [host])
    tx.con.execute(
        "INSERT INTO host_status (host, suspended_at, reason) VALUES (?, ?, ?)",
        [host, tx.now(), reason],
    )


def resume_hosts(tx: Txn, hosts: list[str] | None = None) -> list[str]:
    """Lift the suspension of ``hosts`` (None: of every host); the names that were suspended."""
    if not _exists(tx):
        return []
    current = suspended_hosts(tx)
    names = sorted(current) if hosts is None else [h for h in hosts if h in current]
    for name in names:
        tx.con.execute("DELETE FROM host_status WHERE host = ?", [name])
    return names
