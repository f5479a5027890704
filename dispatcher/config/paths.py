"""Where the queue lives (and its logs), and the lock that marks a running dispatcher.

The queue file is ``--db PATH``, else ``$LABTASKER_DB``, else the first ``.labtasker/queue.duckdb``
found in the current directory or above it (a project-local queue, found as git finds ``.git``);
where there is none, ``queue add`` creates one in the current directory. The queue's project
directory (the one holding ``.labtasker/``) is where the ``local`` host runs tasks, and its run
records live beside the queue. The dispatcher holds an ``fcntl.flock`` on
``<db>.dispatch.lock`` while it runs; the lock dies with its process, so it is never stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from dispatcher.errors import DispatcherRunningError, NoQueueError, StoreError

DB_ENV = "LABTASKER_DB"
DEFAULT_DIR = ".labtasker"
DEFAULT_NAME = "queue.duckdb"
_PROBE_GRACE_S = 0.2


def locate_db(db: Path | None) -> tuple[Path, str]:
    """The queue file to use, and where it was looked for (for ``no_queue_message``).

    ``db``, else ``$LABTASKER_DB``, else the nearest ``.labtasker/queue.duckdb`` in the current
    directory or a parent; when there is none, the path ``queue add`` would create here.
    """
    if db is None:
        env = os.environ.get(DB_ENV, "").strip()
        db = Path(env) if env else None
    if db is not None:
        path = Path(os.path.abspath(db.expanduser()))
        return path, str(path)
    here = Path(os.path.abspath(Path.cwd()))
    for folder in (here, *here.parents):
        found = folder / DEFAULT_DIR / DEFAULT_NAME
        if found.is_file():
            return found, str(found)
    return here / DEFAULT_DIR / DEFAULT_NAME, f"{DEFAULT_DIR}/{DEFAULT_NAME} in {here} and above"


def resolve_db_path(db: Path | None) -> Path:
    """The queue file to use (see ``locate_db``)."""
    return locate_db(db)[0]


def no_queue(looked_in: str) -> NoQueueError:
    """The one error for a command that needs a queue and finds none. ``looked_in`` is what
    ``locate_db`` searched: a directory and its parents, or the one path --db or the
    environment named (then "pass --db" would be no advice)."""
    if looked_in.endswith(" and above"):
        return NoQueueError(
            f"no queue here (looked in {looked_in}); add tasks with `labtasker queue add`,"
            " or pass --db"
        )
    return NoQueueError(
        f"no queue at {looked_in} (named by --db or ${DB_ENV}); add tasks to it with"
        " `labtasker queue add`, or check the path"
    )


def project_dir(db_path: Path) -> Path:
    """The directory a queue belongs to: the one holding its ``.labtasker/`` directory, else
    (a ``--db`` file elsewhere) the directory holding the file."""
    parent = db_path.parent
    return parent.parent if parent.name == DEFAULT_DIR else parent


def local_state_dir(db_path: Path) -> Path:
    """Where the ``local`` host keeps its helper and run records for the queue at ``db_path``
    (``queue.runs/`` beside ``queue.duckdb``): one stable place per queue, so a later
    ``dispatch`` finds the runs an earlier one started."""
    return db_path.with_name(db_path.stem + ".runs")


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) if missing; a directory made here is mode 0700."""
    if directory.is_dir():
        return
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask; be explicit
    except FileExistsError:
        if not directory.is_dir():
            raise StoreError(
                f"{directory} exists but is not a directory; the queue file cannot go there"
                " (choose another place with --db or LABTASKER_DB)"
            ) from None
    except OSError as err:
        raise StoreError(
            f"cannot create the queue directory {directory}: {err.strerror};"
            " choose a writable place with --db or LABTASKER_DB"
        ) from None


def logs_dir(db_path: Path) -> Path:
    """Where the dispatcher of the queue at ``db_path`` keeps task logs (``queue.logs/``)."""
    return db_path.with_name(db_path.stem + ".logs")


def snapshots_dir(db_path: Path) -> Path:
    """Where the project snapshots of the queue at ``db_path`` are kept: ``.labtasker/snapshots``
    for the default queue file, else ``<name>.snapshots`` beside the file."""
    if db_path.name == DEFAULT_NAME:
        return db_path.with_name("snapshots")
    return db_path.with_name(db_path.stem + ".snapshots")


def wanted_path(db_path: Path) -> Path:
    """Present while some process waits for the queue file that a busy dispatcher keeps
    attached: the dispatcher lets go when it sees it (see ``Store.wanted``)."""
    return db_path.with_name(db_path.name + ".wanted")


def lock_path(db_path: Path) -> Path:
    """The dispatcher's lock file for the queue at ``db_path``."""
    return db_path.with_name(db_path.name + ".dispatch.lock")


def _open_lock(db_path: Path, flags: int) -> int:
    path = lock_path(db_path)
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise StoreError(
            f"cannot open the dispatcher lock {path}: {err.strerror};"
            " check that its directory is writable"
        ) from None


@contextlib.contextmanager
def dispatch_lock(db_path: Path) -> Iterator[None]:
    """Hold the dispatcher lock of ``db_path`` for the ``with`` block.

    Raises DispatcherRunningError naming the holder's pid and host when another process holds it.
    """
    fd = _open_lock(db_path, os.O_RDWR | os.O_CREAT)
    try:
        if not _flock_within(fd, _PROBE_GRACE_S):
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            who = f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
            raise DispatcherRunningError(
                f"another dispatcher ({who}) serves the queue {db_path};"
                " stop it first or use another queue with --db"
            ) from None
        # Who holds it, for the message above; written after locking so it is never a stale guess.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _flock_within(fd: int, seconds: float) -> bool:
    # ``dispatcher_running`` holds a shared lock for an instant; ride over such probes.
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def dispatcher_running(db_path: Path) -> bool:
    """True while some process holds the dispatcher lock of ``db_path``."""
    try:
        fd = os.open(lock_path(db_path), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return False  # unreadable lock file: we cannot tell; assume none (only affects a message)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
