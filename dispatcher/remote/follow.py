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
    spec: HostSpec, run_id: str, *, follow: bool, out: Sink, poll: float = 0.5
) -> None:
    """Copy the run's output to ``out``; with ``follow``, until the run exits."""
    transport, client, _ = await start_helper(spec, ssh_options(spec))
    try:
        offset = 0
        while True:
            reply = await client.call("read", run_id=run_id, offset=offset, size=CHUNK)
            data = base64.b64decode(reply.get("data") or "")
            if data:
                out.write(data)
                out.flush()
                offset += len(data)
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
