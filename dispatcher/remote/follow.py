"""Streams a running task's log from its host (``labtasker logs ID [--follow]``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Protocol

from dispatcher.config.hosts import HostSpec
from dispatcher.remote.session import ssh_options, start_helper

CHUNK = 1024 * 1024


class Sink(Protocol):
    """Where the output goes (``sys.stdout.buffer`` or a wrapper of it)."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


async def stream_log(
    spec: HostSpec,
    run_id: str,
    *,
    follow: bool,
    out: Sink,
    poll: float = 0.5,
    offset: int = 0,
    limit: int | None = None,
) -> None:
    """Copy the run's output from byte ``offset`` to ``out``: with ``follow``, until the run
    exits; else what there is now, or its first ``limit`` bytes."""
    transport, client, _ = await start_helper(spec, ssh_options(spec))
    try:
        end = None if limit is None else offset + limit
        while True:
            size = CHUNK if end is None else min(CHUNK, end - offset)
            reply = await client.call("read", run_id=run_id, offset=offset, size=size)
            data = base64.b64decode(reply.get("data") or "")
            if data:
                out.write(data)
                out.flush()
                offset += len(data)
                if end is None or offset < end:
                    continue
            if not follow:
                return
            probe = await client.call("probe", runs=[run_id])
            state = (probe.get("runs") or {}).get(run_id, {}).get("state")
            if state not in ("running", "starting"):
                # One last read: output written between our read and the exit.
                reply = await client.call("read", run_id=run_id, offset=offset, size=CHUNK)
                out.write(base64.b64decode(reply.get("data") or ""))
                out.flush()
                return
            await asyncio.sleep(poll)
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        with contextlib.suppress(Exception):
            await transport.close()
