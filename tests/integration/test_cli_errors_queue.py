"""A queue file that cannot be used, through the real CLI: locked, read-only, corrupt, newer.

Each ends with one ``Error:`` line naming the file and what to do, exit status 2, no traceback,
and the file's bytes unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.store.queue import Store
from dispatcher.store.schema import SCHEMA_VERSION, duckdb
from tests.integration.test_cli_errors_config import one_error
from tests.sshd import poll

REPO = Path(__file__).resolve().parents[2]


def labtasker(db: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """One real ``labtasker`` process on ``db``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))
    environ.update(COLUMNS="200", **env)
    argv = [sys.executable, "-m", "dispatcher", "--db", str(db), *args]
    return subprocess.run(
        argv, cwd=db.parent, env=environ, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "queue.duckdb"
    done = labtasker(path, "queue", "add", "--cmd", "echo %{x}", "--grid", "x=1,2")
    assert done.returncode == 0, done.stderr
    return path


def test_a_file_locked_by_another_process(db: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]);"
         " print('held', flush=True); sys.stdin.read()", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out = holder.stdout
        assert out is not None
        poll(lambda: out.readline().strip() == "held", "the holder opened the file")
        before = db.read_bytes()
        done = labtasker(db, "queue", "add", "--cmd", "echo 3", LABTASKER_LOCK_TIMEOUT="0.5")
        one_error(done, str(db), "stayed locked by process", str(holder.pid), code=2)
        assert db.read_bytes() == before
    finally:
        holder.communicate("")
    assert len(Store(db).tasks()) == 2


def test_a_read_only_file(db: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip(
            "root writes read-only files; the read-only directory case is in test_cli_queue"
        )
    db.chmod(0o444)
    before = db.read_bytes()
    one_error(labtasker(db, "queue", "add", "--cmd", "echo 3"), str(db), code=2)
    assert db.read_bytes() == before


@pytest.fixture
def read_only_mount(db: Path) -> Iterator[Path]:
    """The queue file's directory bind-mounted read-only onto itself: read-only even for root."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root; test_a_read_only_file covers other users")
    where = str(db.parent)
    done = subprocess.run(["mount", "--bind", where, where], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        remount = ["mount", "-o", "remount,ro,bind", where, where]
        done = subprocess.run(remount, capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
        yield db
    finally:
        subprocess.run(["umount", where], capture_output=True, check=True)


def test_a_queue_on_a_read_only_filesystem_even_for_root(read_only_mount: Path) -> None:
    db = read_only_mount
    before = db.read_bytes()
    for args in (("queue", "add", "--cmd", "echo 3"), ("queue", "cancel", "1")):
        one_error(labtasker(db, *args), f"cannot write the queue file {db}", "--db", code=2)
    assert db.read_bytes() == before


def test_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "queue.duckdb"
    path.write_bytes(os.urandom(4096))
    before = path.read_bytes()
    for args in (("queue", "ls"), ("queue", "add", "--cmd", "echo 1"), ("status",)):
        one_error(labtasker(path, *args), str(path), "not a labtasker queue", "--db", code=2)
    assert path.read_bytes() == before


def test_a_file_from_a_newer_labtasker(db: Path) -> None:
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [SCHEMA_VERSION + 5])
    con.close()
    before = db.read_bytes()
    for args in (("queue", "ls", "--json"), ("queue", "add", "--cmd", "echo 1")):
        one_error(
            labtasker(db, *args),
            f"has queue schema version {SCHEMA_VERSION + 5}, written by a newer labtasker",
            "upgrade labtasker",
            code=2,
        )
    assert db.read_bytes() == before
