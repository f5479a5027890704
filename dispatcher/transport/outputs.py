"""Copies a finished task's output files from its host to ``<queue>.outputs/TASK_ID/``.

Owns which files match (globs relative to the task's working directory, never outside it: ``..``
and absolute patterns are refused, symlinks leading out of it are skipped), the size cap, and the
local layout (directories 0700, files 0600). The network side is the transport's: SFTP on the
host's SSH connection (``fetch_sftp``) or the local file system (``fetch_local``).
"""

from __future__ import annotations

import asyncio
import glob as globmod
import os
import posixpath
import shutil
import stat
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dispatcher.core.globs import glob_problem
from dispatcher.core.words import plural

#: Default cap on the bytes copied back per task (hosts.toml ``outputs_max_size``).
DEFAULT_MAX_BYTES = 1024**3
#: SFTP sessions per connection at once: stays well under sshd's MaxSessions (10).
_SFTP_PER_CONNECTION = 2
_sftp_slots: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = weakref.WeakKeyDictionary()


@dataclass
class FetchReport:
    """What one copy did: files copied (relative paths), their bytes, and what was left out."""

    files: list[str] = field(default_factory=list)
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # "path (why)"
    over_limit: bool = False


def outputs_root(db_path: Path) -> Path:
    """Where the queue at ``db_path`` keeps copied outputs (``queue.outputs/``, as logs)."""
    return db_path.with_name(db_path.stem + ".outputs")


def task_outputs_dir(db_path: Path, task_id: int) -> Path:
    """The directory holding one task's copied outputs (its last attempt's)."""
    return outputs_root(db_path) / str(task_id)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class _Files(Protocol):
    """The few file-system calls a copy needs, on the host's side."""

    async def realpath(self, path: str) -> str: ...
    async def glob(self, pattern: str) -> list[str]: ...
    async def kind(self, path: str) -> tuple[str, int]:  # ("file"|"dir"|"other", size), follows
        ...

    async def listdir(self, path: str) -> list[str]: ...
    async def copy(self, path: str, dest: Path) -> None: ...


async def _select(fs: _Files, root: str, globs: Sequence[str], report: FetchReport,
                  max_bytes: int) -> list[tuple[str, str]]:  # fmt: skip
    """(host path, path relative to ``root``) of every file to copy, within ``max_bytes``."""
    chosen: dict[str, str] = {}
    total = 0
    todo: list[str] = []
    for pattern in globs:
        problem = glob_problem(pattern)
        if problem:
            report.skipped.append(f"{pattern} ({problem})")
            continue
        todo += sorted(await fs.glob(posixpath.join(globmod.escape(root), pattern)))
    while todo:
        path = todo.pop(0)
        rel = posixpath.relpath(path, root)
        if rel in chosen.values() or rel.startswith("../"):
            continue
        try:
            real = await fs.realpath(path)
            if not _inside(real, root):
                report.skipped.append(f"{rel} (a link to {real}, outside the working directory)")
                continue
            what, size = await fs.kind(path)
        except OSError as err:
            report.skipped.append(f"{rel} ({_why(err)})")
            continue
        if what == "dir":
            todo = [posixpath.join(path, n) for n in sorted(await fs.listdir(path))] + todo
            continue
        if what != "file":
            report.skipped.append(f"{rel} (not a regular file)")
            continue
        if total + size > max_bytes:
            report.over_limit = True
            report.skipped.append(f"{rel} ({size} bytes; over the size cap)")
            continue
        total += size
        chosen[path] = rel
    return list(chosen.items())


async def _fetch(fs: _Files, workdir: str, globs: Sequence[str], local_dir: Path,
                 max_bytes: int) -> FetchReport:  # fmt: skip
    """Copy into a fresh directory, then swap it in place of ``local_dir`` (last attempt wins)."""
    report = FetchReport()
    if not globs:
        return report
    try:
        root = await fs.realpath(workdir)
    except OSError as err:
        report.skipped.append(f"{workdir} (working directory unreadable: {_why(err)})")
        return report
    files = await _select(fs, root, globs, report, max_bytes)
    tmp = local_dir.with_name(f".{local_dir.name}.tmp")
    _make_private_dir(tmp.parent)
    shutil.rmtree(tmp, ignore_errors=True)
    _make_private_dir(tmp)
    try:
        for path, rel in files:
            dest = tmp.joinpath(*rel.split("/"))
            _make_private_dir(dest.parent)
            try:
                await fs.copy(path, dest)
            except OSError as err:
                report.skipped.append(f"{rel} ({_why(err)})")
                continue
            os.chmod(dest, 0o600)
            report.files.append(rel)
            report.bytes += dest.stat().st_size
        shutil.rmtree(local_dir, ignore_errors=True)
        if report.files:
            os.replace(tmp, local_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _why(err: BaseException) -> str:
    return str(getattr(err, "reason", "") or getattr(err, "strerror", "") or err)


def _make_private_dir(path: Path) -> None:
    for part in reversed([path, *path.parents]):
        if not part.is_dir():
            part.mkdir(mode=0o700)
            os.chmod(part, 0o700)  # mkdir's mode passes through the umask


# -- the local file system (a host named ``local``) ----------------------------------------------


class _LocalFiles:
    async def realpath(self, path: str) -> str:
        return os.path.realpath(os.path.expanduser(path), strict=True)

    async def glob(self, pattern: str) -> list[str]:
        return globmod.glob(pattern, recursive=True)

    async def kind(self, path: str) -> tuple[str, int]:
        st = os.stat(path)
        what = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else ""
        return what or "other", st.st_size

    async def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    async def copy(self, path: str, dest: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, path, dest)


async def fetch_local(workdir: str | None, globs: Sequence[str], local_dir: Path,
                      max_bytes: int = DEFAULT_MAX_BYTES) -> FetchReport:  # fmt: skip
    """Copy files matching ``globs`` under ``workdir`` (None: home) on this machine."""
    return await _fetch(_LocalFiles(), workdir or "~", globs, local_dir, max_bytes)


# -- SFTP on an asyncssh connection --------------------------------------------------------------


class _SftpFiles:
    def __init__(self, sftp: Any) -> None:
        self.sftp = sftp

    async def realpath(self, path: str) -> str:
        import asyncssh

        try:
            return str(await self.sftp.realpath(path))
        except asyncssh.SFTPError as err:
            raise OSError(err.reason) from err

    async def glob(self, pattern: str) -> list[str]:
        # A pattern matching nothing is an error to asyncssh; to us it is just nothing.
        return [str(p) for p in await self.sftp.glob(pattern, error_handler=lambda _e: None)]

    async def kind(self, path: str) -> tuple[str, int]:
        import asyncssh

        try:
            attrs = await self.sftp.stat(path)
        except asyncssh.SFTPError as err:
            raise OSError(err.reason) from err
        kinds = {asyncssh.FILEXFER_TYPE_REGULAR: "file", asyncssh.FILEXFER_TYPE_DIRECTORY: "dir"}
        return kinds.get(attrs.type, "other"), int(attrs.size or 0)

    async def listdir(self, path: str) -> list[str]:
        return [str(n) for n in await self.sftp.listdir(path) if n not in (".", "..")]

    async def copy(self, path: str, dest: Path) -> None:
        import asyncssh

        try:
            await self.sftp.get(path, str(dest), preserve=False)
        except asyncssh.SFTPError as err:
            raise OSError(err.reason) from err


def _sftp_path(workdir: str | None) -> str:
    # SFTP starts in the home directory and does not expand "~": make such paths relative.
    if not workdir or workdir == "~":
        return "."
    return workdir[2:] or "." if workdir.startswith("~/") else workdir


async def fetch_sftp(conn: Any, workdir: str | None, globs: Sequence[str], local_dir: Path,
                     max_bytes: int = DEFAULT_MAX_BYTES) -> FetchReport:  # fmt: skip
    """Copy files matching ``globs`` under ``workdir`` (None: home) over SFTP on ``conn``.

    Per-file problems end up in ``FetchReport.skipped``; connection errors propagate for the
    transport to translate.
    """
    report = FetchReport()
    if not globs:
        return report
    slots = _sftp_slots.setdefault(conn, asyncio.Semaphore(_SFTP_PER_CONNECTION))
    async with slots, conn.start_sftp_client() as sftp:
        return await _fetch(_SftpFiles(sftp), _sftp_path(workdir), globs, local_dir, max_bytes)


def describe(report: FetchReport, limit: int) -> str | None:
    """One line about what was left out (None when nothing was)."""
    if not report.skipped:
        return None
    shown = "; ".join(report.skipped[:3]) + (
        f"; +{len(report.skipped) - 3} more" if len(report.skipped) > 3 else ""
    )
    cap = f" (cap {limit // 1024**2} MiB: raise outputs_max_size)" if report.over_limit else ""
    return f"left out {plural(len(report.skipped), 'output')}{cap}: {shown}"
