"""One host as the dispatcher sees it: its connection, its helper, its GPUs, its health.

A ``HostSession`` owns the transport and the ``HelperClient`` of one host and keeps them alive:
it connects, starts the helper, reports the host up, and after a drop reconnects with capped
exponential backoff. Exit events from the helper are handed to the dispatcher's callback.
Unreachable is a property (``down_since``), not a task state: tasks stay running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dispatcher.config.hosts import HostSpec
from dispatcher.core.outcome import without_host
from dispatcher.errors import (
    AuthError,
    ConnectionLostError,
    DispatcherError,
    HostKeyError,
    ProtocolViolationError,
    PythonMissingError,
    RemoteError,
    TransportError,
)
from dispatcher.remote import protocol
from dispatcher.remote.client import HelperClient
from dispatcher.transport.transports import HostTransport, SSHOptions, make_transport

if TYPE_CHECKING:
    from dispatcher.transport.outputs import FetchReport

HostStatus = Literal["connecting", "up", "down"]

#: Errors that another try will not fix by itself: retry slowly, and say so. A host that broke
#: the protocol is not trusted again soon either.
_PERMANENT = (AuthError, HostKeyError, PythonMissingError, ProtocolViolationError)


@dataclass
class GpuInventory:
    """What nvidia-smi said, and when (monotonic seconds)."""

    gpus: list[dict[str, Any]] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    fetched_at: float = 0.0


async def start_helper(
    spec: HostSpec, options: SSHOptions, fence: str | None = None
) -> tuple[HostTransport, HelperClient, dict[str, Any]]:
    """Connect to a host and start labtasker's helper there; returns (transport, client, hello).

    ``fence``: dispatch's key for this queue and host (``fence_key``); the helper started with
    it fences off every older one with the same key, so a late launch from a stalled session of
    theirs starts nothing.
    """
    transport = make_transport(spec.name, ssh_target=spec.ssh, local=spec.local, options=options)
    try:
        await transport.connect()
        python = spec.python
        if spec.local and python == "python3":
            python = sys.executable  # the controller's own interpreter is known to work
        proc = await transport.start(protocol.bootstrap_argv(python, spec.state_dir, fence))
        client = HelperClient(spec.name, proc.stdout, proc.stdin)
        hello = await client.start(timeout=spec.connect_timeout + 20, stderr_text=proc.stderr_text)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(transport.close(), 5)
        raise
    return transport, client, hello


def fence_key(queue_id: int, host: str) -> str:
    """The helper fence key of one queue on one host (hosts sharing a home share a state dir)."""
    return f"q{queue_id:x}-" + re.sub(r"[^A-Za-z0-9._-]", "_", host)[:100]


def ssh_options(spec: HostSpec, *, accept_new_host_keys: bool = False) -> SSHOptions:
    """The connection settings of one host from its hosts.toml entry."""
    return SSHOptions(
        connect_timeout=spec.connect_timeout,
        keepalive_interval=spec.keepalive_interval,
        keepalive_count_max=spec.keepalive_count_max,
        accept_new_host_keys=accept_new_host_keys,
    )


class HostSession:
    """Keeps one host connected and its helper running; see the module docstring."""

    def __init__(
        self,
        spec: HostSpec,
        options: SSHOptions,
        on_exit: Callable[[HostSession, dict[str, Any]], None],
        on_change: Callable[[HostSession], None],
        fence: str | None = None,
    ) -> None:
        self.spec = spec
        self.fence = fence
        self.name = spec.name
        self.options = options
        self._on_exit = on_exit
        self._on_change = on_change
        self.status: HostStatus = "connecting"
        self.error: str | None = None
        self.permanent_error = False
        self.down_since: float | None = None
        self.connecting_since: float | None = None  # monotonic start of the attempt in flight
        self.last_seen: float | None = None
        self.hello: dict[str, Any] = {}
        self.inventory: GpuInventory | None = None
        self.attempts = 0
        self.first_attempt = asyncio.Event()
        self._client: HelperClient | None = None
        self._transport: HostTransport | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns after ``stop()``."""
        delay = 1.0
        while not self._stopping:
            self.attempts += 1
            try:
                await self._connect()
            except DispatcherError as err:
                self._set_down(str(err), permanent=isinstance(err, _PERMANENT))
            else:
                delay = 1.0
                assert self._client is not None
                client = self._client
                await self._pump(client)
                if self._stopping:
                    break
                if isinstance(client.failure, ProtocolViolationError):
                    await self._close()  # drop it now: it may still be sending
                    self._set_down(str(client.failure), permanent=True)
                else:
                    self._set_down(f"{self.name}: connection lost; reconnecting", permanent=False)
            self.first_attempt.set()
            wait = 60.0 if self.permanent_error else delay
            delay = min(delay * 2, 30.0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def stop(self) -> None:
        """Close the helper and the connection; running tasks on the host keep running."""
        self._stopping = True
        self._wake.set()
        await self._close()

    async def _connect(self) -> None:
        self.status = "connecting"
        self.connecting_since = time.monotonic()
        self._on_change(self)
        await self._close()
        try:
            self._transport, self._client, self.hello = await start_helper(
                self.spec, self.options, self.fence
            )
        finally:
            self.connecting_since = None
        self.status = "up"
        self.error = None
        self.permanent_error = False
        self.down_since = None
        self.last_seen = time.monotonic()
        self.first_attempt.set()
        self._on_change(self)

    async def _pump(self, client: HelperClient) -> None:
        """Forward exit events until the helper's stream closes."""
        closed = asyncio.ensure_future(client.closed.wait())
        try:
            while True:
                get = asyncio.ensure_future(client.events.get())
                done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    self.last_seen = time.monotonic()
                    event = get.result()
                    if event.get("event") == "exit" and isinstance(event.get("run"), dict):
                        self._on_exit(self, event["run"])
                    continue
                get.cancel()
                # Deliver whatever arrived before the close.
                while not client.events.empty():
                    event = client.events.get_nowait()
                    if event.get("event") == "exit" and isinstance(event.get("run"), dict):
                        self._on_exit(self, event["run"])
                return
        finally:
            closed.cancel()

    def _set_down(self, message: str, *, permanent: bool) -> None:
        self._client = None
        self.status = "down"
        self.error = message
        self.permanent_error = permanent
        if self.down_since is None:
            self.down_since = time.monotonic()
        self._on_change(self)

    async def _close(self) -> None:
        client, transport = self._client, self._transport
        self._client = self._transport = None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
        if transport is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(transport.close(), 5)

    # -- calls ---------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.status == "up" and self._client is not None

    async def call(
        self, op: str, *, timeout: float = 30.0, payload: bytes | None = None, **params: Any
    ) -> dict[str, Any]:
        """One helper request; raises ConnectionLostError when the host is not up."""
        client = self._client
        if client is None or self.status != "up":
            raise ConnectionLostError(
                f"{self.name}: not connected ({self.error or 'connecting'})", host=self.name
            )
        try:
            reply = await client.call(op, timeout=timeout, payload=payload, **params)
        except (TransportError, RemoteError):
            if client.closed.is_set() and self._client is client:
                self._wake.set()
            raise
        self.last_seen = time.monotonic()
        return reply

    async def refresh_gpus(self) -> GpuInventory:
        """Ask the host's nvidia-smi (through the helper) for GPUs and their processes."""
        reply = await self.call("gpus", timeout=30.0)
        inv = GpuInventory(
            gpus=list(reply.get("gpus") or []),
            processes=list(reply.get("processes") or []),
            error=reply.get("error"),
            fetched_at=time.monotonic(),
        )
        self.inventory = inv
        return inv

    async def fetch_files(
        self, globs: Sequence[str], local_dir: Path, max_bytes: int, workdir: str | None = None
    ) -> FetchReport:
        """Copy files matching ``globs`` under ``workdir`` (default: the host's) into
        ``local_dir`` (outputs)."""
        transport = self._transport
        if transport is None or self.status != "up":
            raise ConnectionLostError(
                f"{self.name}: not connected ({self.error or 'connecting'})", host=self.name
            )
        root = workdir if workdir is not None else self.spec.workdir
        return await transport.fetch_files(root, globs, local_dir, max_bytes)

    def health(self, now: float) -> str:
        """``describe`` for ``status``, which also tells a first attempt that has no answer yet
        (a stalled host) from a retry after a failure, which keeps the failure's reason."""
        if self.status != "connecting":
            return self.describe()
        if self.error:
            return f"unreachable ({without_host(self.name, self.error)}); trying again"
        if self.connecting_since is None:
            return "connecting"
        return f"connecting for {max(now - self.connecting_since, 0):.0f} s, no answer yet"

    def describe(self) -> str:
        """One line about the host's health, for status and reasons."""
        if self.status == "up":
            return "up"
        if self.status == "connecting":
            return "connecting"
        # The error names the host already; the callers put the name in front of this text.
        return (
            f"unreachable ({without_host(self.name, self.error)})" if self.error else "unreachable"
        )
