"""Copies finished runs' output from their hosts into the controller's logs directory.

Logs are stored as ``<logs_dir>/<run_id>.log`` (0600, directory 0700), so a finished task's
output stays readable with no host reachable. Small logs arrive inline in the exit report; big ones
are read in chunks over the helper's channel. The running tasks' last output lines, for
``labtasker status``, are kept in ``<queue>.status.json`` next to the queue file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

CHUNK = 1024 * 1024


class _Caller(Protocol):
    async def call(self, op: str, *, timeout: float = ..., **params: Any) -> dict[str, Any]: ...


def log_path(logs_dir: Path, run_id: str) -> Path:
    """Where the controller keeps the output of one run."""
    return logs_dir / f"{run_id}.log"


class LogCollector:
    """Writes run logs under one directory; see the module docstring."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir

    def _open(self, run_id: str) -> int:
        self.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(
            log_path(self.logs_dir, run_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )

    async def fetch(self, session: _Caller, report: dict[str, Any]) -> Path:
        """Copy the run's log; inline data when the report has it, else chunked reads."""
        run_id = str(report["run_id"])
        inline = report.get("log")
        size = int(report.get("log_size") or 0)
        fd = self._open(run_id)
        try:
            if isinstance(inline, str):
                os.write(fd, base64.b64decode(inline))
            else:
                offset = 0
                while offset < size:
                    reply = await session.call(
                        "read", run_id=run_id, offset=offset, size=CHUNK, timeout=60.0
                    )
                    data = base64.b64decode(reply.get("data") or "")
                    if not data:
                        break
                    os.write(fd, data)
                    offset += len(data)
        finally:
            os.close(fd)
        return log_path(self.logs_dir, run_id)


def last_lines_path(db_path: Path) -> Path:
    """The file holding running tasks' last output lines for the queue at ``db_path``."""
    return db_path.with_name(db_path.name + ".status.json")


def write_last_lines(db_path: Path, lines: dict[int, str]) -> None:
    """Replace the last-lines file atomically (0600), so ``status`` never reads half of it."""
    target = last_lines_path(db_path)
    data = json.dumps({"lines": {str(k): v for k, v in sorted(lines.items())}}).encode()
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
    try:
        data = json.loads(last_lines_path(db_path).read_text())
    except (OSError, ValueError):
        return {}
    raw = data.get("lines") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        return {}
    return {int(k): v for k, v in raw.items() if k.isdigit() and isinstance(v, str)}
