"""The dashboard's JSON API: one function per route, from the parsed query to a JSON-ready
answer. Reads go through ``Reader`` (the queue at most once a second) and the status file the
dispatcher writes; writes call the store's own operations (``Store.cancel``, ``retry``,
``update``), the ones the CLI calls.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatcher.core.models import ACTIVE_STATES, TaskState
from dispatcher.errors import DispatcherError, UsageError
from dispatcher.web import data

if TYPE_CHECKING:
    from dispatcher.store.txn import Txn
    from dispatcher.web.reader import Reader

#: The most log bytes one answer carries (the page asks again from where it stopped).
LOG_CHUNK = 256 * 1024


@dataclass
class Api:
    """The routes of one dashboard: its reader, and where the hosts file is (for live logs)."""

    reader: Reader
    hosts: Path
    read_only: bool = False

    @property
    def path(self) -> Path:
        return self.reader.store.path

    def overview(self) -> dict[str, Any]:
        """Counts, ETA, running tasks with their last lines, and each host's GPUs."""
        from dispatcher.config.paths import dispatcher_running
        from dispatcher.dispatch.logs import read_status_file
        from dispatcher.ui.views import eta_seconds

        out = dict(self.reader.read("overview", _overview))
        written = read_status_file(self.path)
        counts = out["counts"]
        running = counts.get("running", 0) + counts.get("launching", 0)
        out["eta"] = eta_seconds(out["median_runtime"], counts.get("pending", 0), running)
        out["last_lines"] = {str(k): v for k, v in written.lines.items()}
        out["dispatcher"] = dispatcher_running(self.path)
        out["hosts"] = written.hosts if out["dispatcher"] else {}
        out["written_at"] = written.written_at
        out["read_only"] = self.read_only
        return out

    def queue(self, params: dict[str, str]) -> dict[str, Any]:
        """One page of the queue table (see ``data.QueueQuery``)."""
        try:
            q = data.QueueQuery(
                states=tuple(s for s in params.get("state", "").split(",") if s),
                name=params.get("name", ""),
                sweep=int(params["sweep"]) if params.get("sweep") else None,
                text=params.get("q", ""),
                sort=params.get("sort", "id") or "id",
                desc=params.get("desc") == "1",
                offset=int(params.get("offset", "0") or 0),
                limit=int(params.get("limit", "50") or 50),
            )
        except ValueError as err:
            raise UsageError(f"bad query: {err}") from None
        answer: dict[str, Any] = self.reader.read(("queue", q), lambda t: data.queue_page(t, q))
        return answer

    def task(self, task_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.reader.read(
            ("task", task_id), lambda t: data.task_detail(t, task_id)
        )
        return answer

    def timeline(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.reader.read("timeline", data.timeline)
        return answer

    def results(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.reader.read("results", data.results_table)
        return answer

    def log(self, task_id: int, offset: int) -> dict[str, Any]:
        """The task's output from ``offset``: the controller's copy once it ended, else read
        live from its host through its helper (as ``labtasker logs`` does)."""
        from dispatcher.config.paths import logs_dir
        from dispatcher.dispatch.logs import log_path

        task = self.task(task_id)["task"]
        run_id, state = task["run_id"], TaskState(task["state"])
        if not run_id:
            return {"text": "", "offset": 0, "done": state not in _WAITING}
        local = log_path(logs_dir(self.path), run_id)
        if state not in ACTIVE_STATES:
            blob = local.read_bytes() if local.exists() else b""
            return _chunk(blob, offset, done=True)
        piece = self._live_log(task, max(0, offset))
        return {"text": piece.decode("utf-8", "replace"), "offset": offset + len(piece),
                "done": False}  # fmt: skip

    def _live_log(self, task: dict[str, Any], offset: int) -> bytes:
        """At most LOG_CHUNK bytes of a running task's output from ``offset``, read on its
        host (only what the page has not shown yet)."""
        import asyncio
        import io

        from dispatcher.config.hosts import load_hosts
        from dispatcher.remote.follow import stream_log

        try:
            config = load_hosts(self.hosts, self.path)
        except DispatcherError:
            return b""
        spec = next((h for h in config.hosts if h.name == task["host"]), None)
        if spec is None:
            return b""
        sink = io.BytesIO()
        with contextlib.suppress(DispatcherError):  # it ended meanwhile: the next poll says so
            asyncio.run(stream_log(spec, task["run_id"], follow=False, out=sink, offset=offset,
                                   limit=LOG_CHUNK))  # fmt: skip
        return sink.getvalue()

    def act(self, task_id: int, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Cancel, retry or re-prioritise one task, as ``queue cancel/retry/edit`` do."""
        if self.read_only:
            raise UsageError("this dashboard is read-only (labtasker ui --read-only)")
        store = self.reader.store
        if action == "cancel":
            done = store.cancel([task_id])
            said = {"cancelled": done.cancelled, "requested": done.requested}
        elif action == "retry":
            said = {"retried": store.retry([task_id])}
        elif action == "priority":
            value = body.get("priority")
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError("priority must be a whole number")
            said = {"updated": store.update([task_id], priority=value)}
        else:
            raise UsageError(f"unknown action {action!r}")
        self.reader.forget()
        return said


_WAITING = frozenset({TaskState.PENDING, TaskState.LAUNCHING})


def _overview(txn: Txn) -> dict[str, Any]:
    out = data.overview(txn)
    out["active"] = [t.to_json() for t in txn.tasks(states=ACTIVE_STATES, limit=200)]
    out["read_at"] = time.time()
    return out


def _chunk(blob: bytes, offset: int, *, done: bool) -> dict[str, Any]:
    offset = max(0, min(offset, len(blob)))
    piece = blob[offset : offset + LOG_CHUNK]
    end = offset + len(piece)
    return {
        "text": piece.decode("utf-8", "replace"),
        "offset": end,
        "done": done and end >= len(blob),
    }
