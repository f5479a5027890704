"""The controller's side of the helper protocol, over any pair of byte streams (SSH or a pipe).

``HelperClient`` runs the bootstrap handshake (uploading the helper when the host lacks it), then
multiplexes many requests over the one stream: one reader task routes replies by id to waiting
calls and pushes events to a queue. It maps stream failures to labtasker's errors and does no I/O
of its own beyond the streams it is given. Every line, event and reply passes ``wire``'s checks
first: a host that breaks them ends the session with ``ProtocolViolationError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from dispatcher.errors import (
    ConnectionLostError,
    DispatcherError,
    ProtocolError,
    ProtocolViolationError,
    PythonMissingError,
    RemoteError,
)
from dispatcher.remote import protocol, wire

#: A reply line may carry 1 MiB of base64 log plus framing; anything far larger is a broken peer.
#: The controller holds at most this much of one line, however long the line the host sends.
MAX_LINE = 32 * 1024 * 1024
#: Ops whose request names runs that the helper then watches (and sends exit events about).
_WATCHING = ("launch", "launches", "probe")
#: Lines a login shell may print before the bootstrap speaks (banners, rc-file noise).
MAX_NOISE_LINES = 200
#: How the bootstrap starts the line that refuses a state_dir (protocol.BOOTSTRAP).
STATE_DIR_REFUSED = "labtasker: state_dir "
#: What shells say when the interpreter is missing (a Python traceback may say it too: not that).
_NOT_FOUND = re.compile(r"not found|No such file or directory", re.IGNORECASE)


class _Lines:
    """Line framing over a reader; uses ``read(n)`` when it has one, so no line limit applies."""

    def __init__(self, host: str, reader: Any) -> None:
        self._host = host
        self._reader = reader
        self._buf = bytearray()
        self._eof = False
        self._chunked = callable(getattr(reader, "read", None))

    async def readline(self) -> bytes:
        """One line with its newline; a last line without one; b"" at the end."""
        if not self._chunked:
            try:
                return bytes(await self._reader.readline())
            except ValueError:  # asyncio's StreamReader: a line over its limit
                raise self._too_long() from None
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[: i + 1])
                del self._buf[: i + 1]
                return line
            if self._eof:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            if len(self._buf) > MAX_LINE:
                raise self._too_long()
            chunk = await self._reader.read(65536)
            if chunk:
                self._buf += chunk
            else:
                self._eof = True

    def _too_long(self) -> ProtocolViolationError:
        return wire.violation(self._host, f"a line longer than {MAX_LINE} bytes")


class HelperClient:
    """A session with one helper process on ``host``.

    ``reader`` has ``async read(n)`` or ``async readline()`` returning bytes (asyncio.StreamReader,
    asyncssh's SSHReader with ``encoding=None``); ``writer`` has ``write(bytes)``,
    ``async drain()`` and ``close()`` (``write_eof()`` is used when present).
    """

    def __init__(self, host: str, reader: Any, writer: Any) -> None:
        self.host = host
        self._lines = _Lines(host, reader)
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        #: Runs this session launched or probed and not yet heard of as ended: the only runs
        #: an exit event may name.
        self._watched: set[str] = set()
        self._reader_task: asyncio.Task[None] | None = None
        self._failure: Exception | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.hello: dict[str, Any] = {}
        #: True when ``start`` had to upload the helper (the host had no valid cached copy).
        self.uploaded = False

    async def start(
        self,
        timeout: float = 30.0,
        stderr_text: Callable[[], Awaitable[str]] | None = None,
    ) -> dict[str, Any]:
        """Run the bootstrap handshake and return the helper's hello event.

        Raises PythonMissingError when the host has no usable Python, ProtocolError on a version
        mismatch, RemoteError when the helper ends before saying hello, ConnectionLostError when
        nothing arrives within ``timeout`` seconds.
        """
        noise: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                answer = await self._read_past_noise({b"have", b"need"}, noise)
                if answer is None:
                    raise await self._start_failure(noise, stderr_text)
                if answer == b"need":
                    self.uploaded = True
                    self._writer.write(protocol.helper_source())
                    with contextlib.suppress(ConnectionError):  # it ended: its stderr says why
                        await self._writer.drain()
                hello = await self._read_hello(noise, stderr_text)
        except TimeoutError:
            raise ConnectionLostError(
                f"no answer from {self.host} within {timeout:g}s while starting the helper; "
                "check that the host is up and that its shell start-up does not wait for input",
                host=self.host,
            ) from None
        except DispatcherError:
            raise
        except Exception as exc:  # the transport's own errors end here and become ours
            raise ConnectionLostError(
                f"{self.host}: connection lost while starting the helper: "
                f"{type(exc).__name__}: {exc}",
                host=self.host,
            ) from exc
        version = hello.get("version")
        if version != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                f"{self.host}: the helper speaks protocol {version!r} but this labtasker speaks "
                f"{protocol.PROTOCOL_VERSION}; delete the helper-*.py files in "
                f"{hello.get('state_dir', 'its state dir')} on {self.host} and retry",
                host=self.host,
            )
        self.hello = hello
        self._reader_task = asyncio.create_task(self._read_loop(), name=f"helper-{self.host}")
        return hello

    async def _read_past_noise(self, wanted: set[bytes], noise: list[str]) -> bytes | None:
        """The first line that is one of ``wanted``; None at EOF. Other lines go to ``noise``."""
        while len(noise) < MAX_NOISE_LINES:
            line = await self._lines.readline()
            if not line.endswith(b"\n"):
                if line:
                    noise.append(line[:1000].decode("utf-8", "replace"))
                return None
            text = line.strip()
            if text in wanted:
                return text
            noise.append(line[:1000].decode("utf-8", "replace").rstrip())  # kept: bounded
        raise ProtocolError(
            f"{self.host}: the remote shell printed {MAX_NOISE_LINES} lines before the helper "
            f"started; the first: {noise[0][:200]!r}. Make the shell's start-up files quiet for "
            "non-interactive sessions",
            host=self.host,
        )

    async def _read_hello(
        self, noise: list[str], stderr_text: Callable[[], Awaitable[str]] | None
    ) -> dict[str, Any]:
        line = await self._lines.readline()
        if not line.endswith(b"\n"):
            raise await self._start_failure(noise, stderr_text)
        try:
            hello = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply to be ours
            hello = None
        if not isinstance(hello, dict) or hello.get("event") != "hello":
            raise ProtocolError(
                f"{self.host}: expected the helper's hello, got {line[:200]!r}", host=self.host
            )
        return wire.check_hello(self.host, hello)

    async def _start_failure(
        self, noise: list[str], stderr_text: Callable[[], Awaitable[str]] | None
    ) -> RemoteError:
        """The error for a stream that ended before the helper said hello."""
        err = ""
        if stderr_text is not None:
            with contextlib.suppress(Exception):
                err = (await asyncio.wait_for(stderr_text(), 5.0)).strip()
        text = err or "\n".join(noise).strip()
        refused = text.splitlines()[-1] if text else ""
        if refused.startswith(STATE_DIR_REFUSED):  # the bootstrap's own one-line refusal
            return RemoteError(
                f"{self.host}: {refused.removeprefix('labtasker: ')}", host=self.host
            )
        too_old = "Python >= 3.8 needed" in text
        if too_old or ("Traceback" not in text and _NOT_FOUND.search(text)):
            return PythonMissingError(
                f"{self.host}: no usable Python >= 3.8 ({text.splitlines()[-1][:300]}); install "
                "one or set the host's python in hosts.toml",
                host=self.host,
            )
        return RemoteError(
            f"{self.host}: the helper stopped before it started: {text[:500] or 'no output'}",
            host=self.host,
        )

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._lines.readline()
                if not line.endswith(b"\n"):
                    raise ConnectionLostError(
                        f"{self.host}: the helper's connection closed", host=self.host
                    )
                msg = wire.parse_line(self.host, line)
                if "event" in msg:
                    event = wire.check_event(self.host, msg, self._watched)
                    self._watched.discard(event["run"]["run_id"])
                    self.events.put_nowait(event)
                    continue
                req_id = msg.get("id")
                # Replies to calls that timed out, or to nothing we sent, are dropped.
                fut = self._pending.pop(req_id, None) if isinstance(req_id, int) else None
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except asyncio.CancelledError:
            self._fail(ConnectionLostError(f"{self.host}: helper session closed", host=self.host))
            raise
        except (ConnectionLostError, ProtocolError) as exc:
            self._fail(exc)
        except Exception as exc:  # the transport's own errors end here and become ours
            self._fail(
                ConnectionLostError(
                    f"{self.host}: connection to the helper lost: {type(exc).__name__}: {exc}",
                    host=self.host,
                )
            )

    @property
    def failure(self) -> Exception | None:
        """Why the session ended (None while it lives); the first cause, not later fallout."""
        return self._failure

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        self.closed.set()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    async def call(
        self, op: str, *, timeout: float | None = 30.0, payload: bytes | None = None, **params: Any
    ) -> dict[str, Any]:
        """Send one request and return its reply; many calls may be in flight at once.
        ``payload``: binary bytes sent after the request's line (the helper's PAYLOAD_MARK).

        Raises RemoteError when the helper answers ok=false, ConnectionLostError when the stream
        closes or no reply comes within ``timeout`` seconds, ProtocolViolationError (and ends the
        session) when the reply breaks ``wire``'s checks.
        """
        if self._failure is not None or self._reader_task is None:
            raise self._failure or ConnectionLostError(
                f"{self.host}: the helper is not started; call start() first", host=self.host
            )
        req_id = next(self._ids)
        self._track(op, params)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            line = json.dumps({**params, "id": req_id, "op": op}).encode() + b"\n"
            if payload is not None:
                line = b"%s%d %s%s" % (protocol.PAYLOAD_MARK, len(payload), line, payload)
            self._writer.write(line)
            await self._writer.drain()
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ConnectionLostError(
                f"no answer from {self.host} within {timeout:g}s to {op!r}; the host or the "
                "connection may be stalled",
                host=self.host,
            ) from None
        except (OSError, EOFError) as exc:
            raise ConnectionLostError(
                f"{self.host}: could not send {op!r} to the helper: {exc}", host=self.host
            ) from exc
        finally:
            self._pending.pop(req_id, None)
        try:
            reply = wire.check_reply(self.host, op, params, reply)
        except ProtocolViolationError as exc:
            self._violated(exc)
            raise
        if not reply.get("ok"):
            raise RemoteError(f"{self.host}: {reply.get('error')}", host=self.host)
        if op == "cleanup":  # removed runs are done; refused ones still run and will end
            self._watched.difference_update(set(params.get("runs") or ()) - set(reply["refused"]))
        return reply

    def _track(self, op: str, params: dict[str, Any]) -> None:
        """Note the runs a request names that the helper will watch (before it can answer)."""
        if op in _WATCHING:
            runs = params.get("runs") if op != "launch" else [params]
            self._watched.update(
                str(r.get("run_id") if isinstance(r, dict) else r) for r in runs or ()
            )

    def _violated(self, exc: ProtocolViolationError) -> None:
        """End the session after a bad reply: the helper sees EOF, the reader stops."""
        self._fail(exc)
        for end in ("write_eof", "close"):
            with contextlib.suppress(Exception):
                getattr(self._writer, end)()
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def close(self) -> None:
        """End the session: the helper sees EOF and exits; its tasks keep running."""
        for end in ("write_eof", "close"):  # EOF first: the helper's cue to exit cleanly
            with contextlib.suppress(Exception):
                getattr(self._writer, end)()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._failure is None:
            self._fail(ConnectionLostError(f"{self.host}: helper session closed", host=self.host))
