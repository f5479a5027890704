"""A command started on a host: the ``Process`` interface and ``_Proc``, its one implementation
over an asyncssh or asyncio process (stream errors mapped to ``TransportError``s, stderr's tail
kept). Starting processes belongs to transport.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from dispatcher.transport.errors import _Mapper, _raise_mapped

#: How much of a process's stderr is kept (the tail): enough for a traceback, bounded.
STDERR_LIMIT = 64 * 1024


class ByteWriter(Protocol):
    """A process's stdin."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def write_eof(self) -> None: ...


class ByteReader(Protocol):
    """A process's stdout; b"" means end of stream. A line over ~1 MiB may arrive in pieces."""

    async def readline(self) -> bytes: ...
    async def read(self, n: int = -1) -> bytes: ...


class Process(Protocol):
    """A command started on a host. Stream errors surface as ``TransportError``s."""

    @property
    def stdin(self) -> ByteWriter: ...
    @property
    def stdout(self) -> ByteReader: ...
    async def stderr_text(self) -> str:
        """The last ``STDERR_LIMIT`` bytes of stderr, decoded; waits for the stream's end."""
        ...

    async def wait(self) -> int | None:
        """Exit status (-N if killed by signal N); None if the connection dropped first."""
        ...

    def kill(self) -> None:
        """Send KILL, and EOF to stdin. A server may refuse signals (sshd does for root): the
        process then ends when it reads that EOF, or when the connection closes."""
        ...


class _Writer:
    def __init__(self, raw: Any, mapper: _Mapper) -> None:
        self._raw, self._map = raw, mapper

    def write(self, data: bytes) -> None:
        try:
            self._raw.write(data)
        except Exception as exc:
            _raise_mapped(exc, self._map)

    async def drain(self) -> None:
        try:
            await self._raw.drain()
        except Exception as exc:
            _raise_mapped(exc, self._map)

    def write_eof(self) -> None:
        try:
            self._raw.write_eof()
        except Exception as exc:
            _raise_mapped(exc, self._map)


class _Reader:
    def __init__(self, raw: Any, mapper: _Mapper) -> None:
        self._raw, self._map = raw, mapper

    async def readline(self) -> bytes:
        try:
            return bytes(await self._raw.readline())
        except Exception as exc:
            _raise_mapped(exc, self._map)

    async def read(self, n: int = -1) -> bytes:
        try:
            return bytes(await self._raw.read(n))
        except Exception as exc:
            _raise_mapped(exc, self._map)


async def _stderr_tail(raw: Any) -> bytes:
    # Always drained, so a chatty process never blocks on a full pipe or SSH window.
    tail = b""
    with contextlib.suppress(Exception):  # a lost connection ends stderr; stdout reports it
        while chunk := await raw.read(65536):
            tail = (tail + chunk)[-STDERR_LIMIT:]
    return tail


class _Proc:
    """``Process`` over an asyncssh process or an asyncio subprocess: they share the shape."""

    def __init__(self, raw: Any, mapper: _Mapper, stop: Callable[[], None]) -> None:
        self._raw, self._stop = raw, stop
        self.stdin: ByteWriter = _Writer(raw.stdin, mapper)
        self.stdout: ByteReader = _Reader(raw.stdout, mapper)
        self.stderr_task = asyncio.ensure_future(_stderr_tail(raw.stderr))

    async def stderr_text(self) -> str:
        return (await asyncio.shield(self.stderr_task)).decode("utf-8", "replace")

    async def wait(self) -> int | None:
        await self._raw.wait()
        code: int | None = self._raw.returncode
        return code

    def kill(self) -> None:
        self._stop()

    async def settle(self) -> None:
        """Stop the process if it runs and end its stderr task, so no task outlives the loop."""
        self.kill()
        with contextlib.suppress(Exception):
            await self._raw.wait()
        self.stderr_task.cancel()  # a child it left behind may hold stderr open
        await asyncio.wait({self.stderr_task})
