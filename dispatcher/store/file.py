"""The queue file: how each transaction opens and closes it (``QueueFile``, the base of ``Store``).

Several processes share one DuckDB file, and DuckDB lets only one process have it open. So no
process keeps it open for long: each operation is one short transaction. A process holds one
in-memory DuckDB instance; a transaction ATTACHes the file (which takes DuckDB's file lock), runs
BEGIN ... COMMIT (ROLLBACK on error), then DETACHes it (checkpoint, lock released). A busy
dispatcher may leave it attached between back-to-back transactions (``Txn.linger``), for a few
seconds at most, and ``release`` ends that at once. An ATTACH refused because another process
holds the file creates ``<queue>.wanted`` (removed once that process is done with the file): a
dispatcher keeping the file releases it when it sees that (``wanted``). The refused ATTACH is
retried with exponential backoff and jitter until the lock timeout (120 s; env
LABTASKER_LOCK_TIMEOUT), then StoreLockedError. Guarantees: every committed
write is durable and none is lost to a concurrent writer; a failed operation changes nothing.
``change_token`` lets a polling reader skip the file while nobody has written it. The SQL lives
in ``store.txn`` (reads, user operations), ``store.move`` (``Txn.move``, the one function that
changes a task's state), ``store.add`` (bulk adds) and ``store.schema`` (tables, migrations);
``store.queue`` adds the one-transaction operations of the ``Store`` API.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from dispatcher.config.paths import ensure_private_dir, locate_db, no_queue, wanted_path
from dispatcher.errors import StoreError, StoreLockedError, StoreVersionError, UsageError
from dispatcher.store import schema
from dispatcher.store.schema import duckdb
from dispatcher.store.txn import Txn

LOCK_TIMEOUT_ENV = "LABTASKER_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 120.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.002, 0.1
#: A waiting process touches ``wanted_path`` at every try (at least every _BACKOFF_MAX).
_WISH_FRESH = 1.0
# File times tick with the kernel's coarse clock; a token this fresh could miss a second write.
_RACY_NS = 100_000_000
_aliases = itertools.count()
_fresh = itertools.count()
_instance_lock = threading.Lock()
_instance: tuple[int, duckdb.DuckDBPyConnection] | None = None
_path_locks: dict[Path, threading.Lock] = {}
_held = threading.local()


@dataclass
class _Attachment:
    """A queue file left attached after a commit (``Txn.linger``); used under its path lock."""

    pid: int
    con: duckdb.DuckDBPyConnection
    alias: str
    serial: int  # which attachment: a new one may follow writes by other processes
    since: float  # monotonic time of the ATTACH
    uses: int = 0  # transactions run on it so far
    wished: bool = False  # it waited for the file, so removes ``wanted_path`` when done


_lingering: dict[Path, _Attachment] = {}


def _connection() -> duckdb.DuckDBPyConnection:
    """A cursor on this process's in-memory DuckDB instance (made anew after a fork)."""
    global _instance
    with _instance_lock:
        if _instance is None or _instance[0] != os.getpid():
            _instance = (os.getpid(), duckdb.connect(":memory:"))
        return _instance[1].cursor()


def lock_timeout_from_env() -> float:
    """The lock timeout in seconds from LABTASKER_LOCK_TIMEOUT, else 120."""
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UsageError(f"{LOCK_TIMEOUT_ENV}={text!r} is not a number of seconds (>= 0)")
    return value


class QueueFile:
    """The queue file at ``path``: transactions on it (``transaction``), each opening and closing
    it, and what a long-running user of the file needs (``try_attach``, ``release``, ``wanted``,
    ``change_token``)."""

    path: Path

    def __init__(self, path: Path, *, lock_timeout: float | None = None, create: bool = True):
        self.path = Path(os.path.abspath(path))
        self.create = create  # may a transaction create a missing file? (else NoQueueError)
        self.looked_in = str(self.path)
        self.lock_timeout = lock_timeout_from_env() if lock_timeout is None else lock_timeout
        self._wishing = False  # a try_attach touched ``wanted_path`` and has not attached yet
        self.holder = "another process"  # who held the file at the last refused try_attach

    @classmethod
    def open_default(cls, db: Path | None, *, create: bool = False) -> Self:
        """The store at ``db``, else $LABTASKER_DB, else the nearest ``.labtasker/queue.duckdb``
        (``config.paths.locate_db``). Unless ``create``, a missing queue raises NoQueueError at
        once and nothing is created; with it, nothing is made yet either: the first transaction
        makes the file and its directory, so an add refused before it leaves nothing behind."""
        path, looked_in = locate_db(db)
        store = cls(path, create=create)
        store.looked_in = looked_in
        if not create:
            store.require()
        return store

    def require(self) -> None:
        """Raise NoQueueError unless the queue file exists or may be created."""
        if not self.create and not os.path.exists(self.path):
            raise no_queue(self.looked_in)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        """Open the file (retrying while locked), BEGIN, yield, COMMIT or ROLLBACK, close."""
        held: set[Path] = _held.__dict__.setdefault("paths", set())
        if self.path in held:
            raise StoreError(f"{self.path}: a transaction is already open in this thread")
        with _instance_lock:
            guard = _path_locks.setdefault(self.path, threading.Lock())
        # Threads of one process share the DuckDB instance, which attaches a file only once.
        if not guard.acquire(timeout=max(self.lock_timeout, 0.001)):
            raise self._locked_error("another thread of this process")
        held.add(self.path)
        try:
            attached = self._open()
            linger = False
            try:
                attached.uses += 1
                con = attached.con
                con.execute("BEGIN")
                txn = Txn(con, self.path)
                txn.attachment = (attached.serial, attached.uses)
                try:
                    yield txn
                    txn.settle()
                except BaseException:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
                linger = txn.linger > 0 and time.monotonic() - attached.since < txn.linger
            finally:
                if linger:
                    _lingering[self.path] = attached
                else:
                    self._close(attached, failing=sys.exc_info()[0] is not None)
        except duckdb.Error as err:
            raise _store_error(self.path, err) from None
        finally:
            held.discard(self.path)
            guard.release()

    def release(self) -> None:
        """Detach the file if a transaction left it attached (``Txn.linger``), so that other
        processes can open it; no-op otherwise."""
        with _instance_lock:
            guard = _path_locks.setdefault(self.path, threading.Lock())
        if self.path not in _lingering or self.path in getattr(_held, "paths", ()):
            return
        with guard:
            attached = _lingering.pop(self.path, None)
            if attached is not None:
                try:
                    self._close(attached, failing=False)
                except duckdb.Error as err:
                    raise _store_error(self.path, err) from None

    def _open(self) -> _Attachment:
        """The attachment left by the previous transaction, else a new one (schema checked)."""
        attached = _lingering.pop(self.path, None)
        if attached is not None and attached.pid == os.getpid():
            return attached
        attached = self._attach_new(wait=True)
        assert attached is not None
        return attached

    def _attach_new(self, *, wait: bool) -> _Attachment | None:
        """A new attachment (schema checked); None at once, unless ``wait``, while another
        process holds the file."""
        if not os.path.exists(self.path):
            self.require()
            self._create()
        con = _connection()
        serial = next(_aliases)
        alias = f"labtasker_q{serial}"
        attached = _Attachment(os.getpid(), con, alias, serial, time.monotonic())
        try:
            wished = self._attach(con, alias, wait=wait)
            if wished is None:
                con.close()
                return None
            attached.wished = wished
            con.execute(f"USE {alias}")
            schema.migrate(con, alias, self.path)
        except BaseException:
            self._close(attached, failing=True)
            raise
        return attached

    def try_attach(self) -> bool:
        """Attach the file now, if no other process holds it, and let it linger for the next
        transaction of this thread; False at once otherwise (another thread of this process
        counts as holding it). For the event loop of ``dispatch``, which must never sleep
        inside a transaction's lock wait: it retries with ``await asyncio.sleep`` instead, and
        gives up after ``lock_timeout`` with ``locked_error``."""
        with _instance_lock:
            guard = _path_locks.setdefault(self.path, threading.Lock())
        if not guard.acquire(blocking=False):
            return False
        try:
            if self.path in _lingering:
                return True
            try:
                attached = self._attach_new(wait=False)
            except duckdb.Error as err:
                raise _store_error(self.path, err) from None
            if attached is None:
                return False
            _lingering[self.path] = attached
            return True
        finally:
            guard.release()

    def _close(self, attached: _Attachment, *, failing: bool) -> None:
        """DETACH (checkpoint, lock released); errors are raised unless already failing."""
        con = attached.con
        try:
            con.execute("USE memory")
            con.execute(f"DETACH {attached.alias}")
        except duckdb.Error:
            if not failing:
                raise
        finally:
            con.close()
            if attached.wished:
                with contextlib.suppress(OSError):
                    wanted_path(self.path).unlink()

    def wanted(self) -> bool:
        """True while another process waits for the file (see the module docstring): its
        request was touched within the last second (one left by a killed process goes stale)."""
        try:
            return time.time() - os.stat(wanted_path(self.path)).st_mtime < _WISH_FRESH
        except OSError:
            return False

    def _attach(self, con: duckdb.DuckDBPyConnection, alias: str, *, wait: bool) -> bool | None:
        """ATTACH, waiting while another process holds the file; True if it had to wait (or
        waited in earlier ``try_attach`` calls), None if it would have to and ``wait`` is
        False."""
        deadline = time.monotonic() + self.lock_timeout
        delay = _BACKOFF_FIRST
        wished, wish = self._wishing, wanted_path(self.path)
        while True:
            try:
                con.execute(f"ATTACH ? AS {alias}", [str(self.path)])
                self._wishing = False
                return wished
            except duckdb.Error as err:
                if not _is_lock_conflict(err):
                    raise
                holder = str(err)
            with contextlib.suppress(OSError):  # touched at every try: a stale one is ignored
                wish.touch(0o600)
                wished = True
            if not wait:
                self._wishing, self.holder = wished, _holder(holder)
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                if wished:
                    with contextlib.suppress(OSError):
                        wish.unlink()
                raise self._locked_error(_holder(holder))
            time.sleep(min(left, random.uniform(delay / 2, delay)))
            delay = min(delay * 2, _BACKOFF_MAX)

    def locked_error(self) -> StoreLockedError:
        """The error for a wait on the file past ``lock_timeout`` (see ``try_attach``)."""
        if self._wishing:
            with contextlib.suppress(OSError):
                wanted_path(self.path).unlink()
            self._wishing = False
        return self._locked_error(self.holder)

    def _locked_error(self, holder: str) -> StoreLockedError:
        return StoreLockedError(
            f"the queue file {self.path} stayed locked by {holder} for {self.lock_timeout:g} s;"
            f" wait for it to finish, or raise {LOCK_TIMEOUT_ENV} (seconds)"
        )

    def _create(self) -> None:
        """Make a new queue file with the schema, born private (0600), without ever showing a
        half-made file: build it in a private temp dir, then hard-link it into place."""
        import tempfile

        parent = self.path.parent
        ensure_private_dir(parent)  # a new queue's directory (mode 0700), made with its file
        try:
            tmpdir = tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".new", dir=parent)
        except OSError as err:
            raise StoreError(
                f"cannot create the queue file {self.path}: {err.strerror};"
                " make the directory writable or choose another file with --db or LABTASKER_DB"
            ) from None
        tmp = Path(tmpdir) / self.path.name
        con = _connection()
        try:
            con.execute("ATTACH ? AS labtasker_new", [str(tmp)])
            con.execute("USE labtasker_new")
            schema.migrate(con, "labtasker_new", self.path)
            con.execute("USE memory")
            con.execute("DETACH labtasker_new")
            os.chmod(tmp, 0o600)
            with contextlib.suppress(FileExistsError):  # another process made it first: use that
                os.link(tmp, self.path)
        except duckdb.Error as err:
            raise _store_error(self.path, err) from None
        except OSError as err:
            raise StoreError(
                f"cannot create the queue file {self.path}: {err.strerror};"
                " choose another file with --db or LABTASKER_DB"
            ) from None
        finally:
            con.close()
            for leftover in Path(tmpdir).iterdir():
                leftover.unlink()
            os.rmdir(tmpdir)

    def change_token(self) -> tuple[int, ...]:
        """A cheap stat-based token that changes whenever the file is written.

        Compare tokens to skip re-reading an unchanged queue. A token from a file written in the
        last 100 ms never equals another token, since file times are too coarse to tell writes
        that close apart.
        """
        parts: list[int] = []
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                st = os.stat(p)
            except FileNotFoundError:
                parts += [0, 0, 0]
            else:
                parts += [st.st_ino, st.st_mtime_ns, st.st_size]
        if time.time_ns() - max(parts[1], parts[4]) < _RACY_NS:
            parts.append(-1 - next(_fresh))
        return tuple(parts)


def _is_lock_conflict(err: duckdb.Error) -> bool:
    text = str(err)
    return "Could not set lock" in text or "Conflicting lock" in text


def _holder(message: str) -> str:
    # DuckDB names the holder: "Conflicting lock is held in /usr/bin/python3 (PID 123)".
    _, sep, rest = message.partition("Conflicting lock is held in ")
    if not sep:
        return "another process"
    return "process " + rest.split(". See also", 1)[0].split(" by user", 1)[0].strip()


def _store_error(path: Path, err: duckdb.Error) -> StoreError:
    """Map a DuckDB error on ``path`` to labtasker's tree: the one translation boundary."""
    text = str(err).strip()
    if "not a valid DuckDB database file" in text:
        return StoreError(
            f"{path} is not a labtasker queue (the file exists but is not a DuckDB database);"
            " move it away or choose another file with --db or LABTASKER_DB"
        )
    if "Permission denied" in text or "Read-only file system" in text:
        return StoreError(
            f"cannot write the queue file {path} or its directory (permission denied);"
            " make them writable or choose another file with --db or LABTASKER_DB"
        )
    if "newer version" in text or "older version" in text or "storage version" in text:
        return StoreVersionError(
            f"{path} was written by an incompatible DuckDB; upgrade labtasker and duckdb ({text})"
        )
    return StoreError(f"queue file {path}: {text}")
