"""Copies finished runs' output from their hosts into the controller's logs directory.

Logs are stored as ``<logs_dir>/<run_id>.log`` (0600, directory 0700), so a finished task's
output stays readable with no host reachable. Small logs arrive inline in the exit report; big ones
are read in chunks over the helper's channel. A log over its host's ``max_log_size`` keeps its
head and its tail around one ``[labtasker: N bytes cut]`` line; the rest is never read.
The running tasks' last output lines and each host's GPU use, for ``labtasker status``, are
kept in ``<queue>.status.json`` next to the queue file, stamped with the time written so a
reader can tell a stopped dispatcher's stale view.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dispatcher.errors import RemoteError
from dispatcher.remote.wire import RUN_ID

if TYPE_CHECKING:
    from dispatcher.core.models import Task
    from dispatcher.remote.session import HostSession

CHUNK = 1024 * 1024
#: ``max_log_size`` when hosts.toml sets none.
DEFAULT_MAX_LOG = 64 * 1024 * 1024


class _Caller(Protocol):
    async def call(self, op: str, *, timeout: float = ..., **params: Any) -> dict[str, Any]: ...


def log_path(logs_dir: Path, run_id: str) -> Path:
    """Where the controller keeps the output of one run."""
    return logs_dir / f"{run_id}.log"


@dataclass
class SavedLog:
    """One run's log as copied: where, how many bytes the run printed, how many were cut."""

    path: Path
    size: int
    cut: int = 0
    first_cut: bool = False  # the first copy of this run that was cut: say so (once)

    def note(self, limit: int) -> str:
        return (
            f"its log is {self.size} bytes, over max_log_size ({limit} bytes); kept its head "
            f"and tail in {self.path} ({self.cut} bytes cut)"
        )


def cut_marker(cut: int, after: bytes) -> bytes:
    """The line standing for ``cut`` bytes left out, on a line of its own after ``after``."""
    start = b"" if not after or after.endswith(b"\n") else b"\n"
    return start + f"[labtasker: {cut} bytes cut]\n".encode()


def _split(size: int, limit: int) -> tuple[int, int]:
    """Bytes kept from the head and from the tail of a log of ``size`` bytes."""
    if size <= limit:
        return size, 0
    return limit // 2, limit - limit // 2


class LogCollector:
    """Writes run logs under one directory; see the module docstring."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self._cut: set[str] = set()  # runs whose cut log was reported

    def _open(self, run_id: str) -> int:
        # The report was checked at the boundary (``wire``); this guards the file system itself.
        if not RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
            raise RemoteError(f"refusing to save a log for {run_id[:100]!r}: not a run id")
        self.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(
            log_path(self.logs_dir, run_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )

    def _saved(self, run_id: str, size: int, cut: int) -> SavedLog:
        first = cut > 0 and run_id not in self._cut
        if first:
            self._cut.add(run_id)
        return SavedLog(log_path(self.logs_dir, run_id), size, cut, first)

    def write_inline(self, report: dict[str, Any], limit: int = DEFAULT_MAX_LOG) -> SavedLog | None:
        """Save a log that came inline in ``report``; None (no file) when it is empty."""
        inline = report.get("log")
        if not isinstance(inline, str) or not inline:
            return None
        run_id = str(report["run_id"])
        data = base64.b64decode(inline)
        head, tail = _split(len(data), limit)
        cut = len(data) - head - tail
        if cut:
            data = data[:head] + cut_marker(cut, data[:head]) + data[len(data) - tail :]
        fd = self._open(run_id)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return self._saved(run_id, head + tail + cut, cut)

    @staticmethod
    def inline(report: dict[str, Any]) -> bool:
        """Whether an exit report carries its whole log (or the run printed nothing)."""
        return isinstance(report.get("log"), str) or not report.get("log_size")

    async def fetch(
        self, session: _Caller, report: dict[str, Any], limit: int = DEFAULT_MAX_LOG
    ) -> SavedLog | None:
        """Copy the run's log; inline data when the report has it, else chunked reads of at
        most ``limit`` bytes (head and tail). A run that printed nothing gets no file (None):
        most short tasks, and a file each costs."""
        if self.inline(report):
            return self.write_inline(report, limit)
        size = int(report["log_size"])
        run_id = str(report["run_id"])
        head, tail = _split(size, limit)
        fd = self._open(run_id)
        try:
            last = await self._copy(session, run_id, fd, 0, head)
            if tail:
                os.write(fd, cut_marker(size - head - tail, last))
                await self._copy(session, run_id, fd, size - tail, size)
        finally:
            os.close(fd)
        return self._saved(run_id, size, size - head - tail)

    @staticmethod
    async def _copy(session: _Caller, run_id: str, fd: int, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` of the run's log into ``fd``; the last chunk written."""
        offset, data = start, b""
        while offset < end:
            size = min(CHUNK, end - offset)
            reply = await session.call(
                "read", run_id=run_id, offset=offset, size=size, timeout=60.0
            )
            chunk = base64.b64decode(reply.get("data") or "")[:size]
            if not chunk:
                break
            os.write(fd, chunk)
            data, offset = chunk, offset + len(chunk)
        return data


def last_lines_path(db_path: Path) -> Path:
    """The file holding running tasks' last output lines for the queue at ``db_path``."""
    return db_path.with_name(db_path.name + ".status.json")


def write_last_lines(
    db_path: Path, lines: dict[int, str], *, hosts: Mapping[str, Any] | None = None
) -> None:
    """Replace the status file atomically (0600), so ``status`` never reads half of it.

    ``hosts``: each host's GPU view (``gpu_views``); the file also records when it was written.
    """
    target = last_lines_path(db_path)
    data = json.dumps(
        {
            "written_at": time.time(),
            "lines": {str(k): v for k, v in sorted(lines.items())},
            "hosts": dict(hosts or {}),
        }
    ).encode()
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        os.write(fd, data)
        os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_last_lines(db_path: Path) -> dict[int, str]:
    """The last output line per task id as the dispatcher last saw it ({} when none)."""
    return read_status_file(db_path).lines


@dataclass
class StatusFile:
    """What the dispatcher last wrote for ``status``; ``written_at`` None when never written."""

    lines: dict[int, str] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    written_at: float | None = None  # seconds since the epoch


def read_status_file(db_path: Path) -> StatusFile:
    """The status file of the queue at ``db_path``; an empty one when missing or damaged."""
    try:
        data = json.loads(last_lines_path(db_path).read_text())
    except (OSError, ValueError):
        return StatusFile()
    if not isinstance(data, dict):
        return StatusFile()
    out = StatusFile()
    raw = data.get("lines")
    if isinstance(raw, dict):
        out.lines = {int(k): v for k, v in raw.items() if k.isdigit() and isinstance(v, str)}
    hosts = data.get("hosts")
    if isinstance(hosts, dict):
        out.hosts = {k: v for k, v in hosts.items() if isinstance(k, str) and isinstance(v, dict)}
    written = data.get("written_at")
    if isinstance(written, int | float) and not isinstance(written, bool):
        out.written_at = float(written)
    return out


def gpu_views(
    sessions: Iterable[HostSession], active: Iterable[Task], now: float
) -> dict[str, dict[str, Any]]:
    """Each host's GPUs as ``status`` shows them: ours (the task holding it, or the tasks sharing
    it with what they declared), someone else's, or free; memory used, total and free (room).

    ``now`` is monotonic, like the inventories' ``fetched_at``; ``age`` is how old each view is.
    """
    from dispatcher.dispatch.capacity import gpu_rows  # here: `status` imports this module

    by_host: dict[str | None, list[Task]] = {}
    for t in active:  # one pass: with 64 hosts, one per host costs 64 x the running tasks
        by_host.setdefault(t.host, []).append(t)
    views: dict[str, dict[str, Any]] = {}
    for s in sessions:
        inv = s.inventory
        inventory = None if inv is None else {"gpus": inv.gpus, "processes": inv.processes}
        gpus = gpu_rows(s.spec, inventory, by_host.get(s.name, []))
        views[s.name] = {
            "status": s.health(now),
            "gpus": gpus,
            "error": inv.error if inv is not None else None,
            "age": None if inv is None else round(max(now - inv.fetched_at, 0.0), 1),
        }
    return views
