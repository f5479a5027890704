"""The boundary between labtasker and the network: run an argv on a host, over SSH or locally.

``HostTransport``/``Process`` are the small interface the rest of labtasker uses; ``SSHTransport``
(asyncssh, honouring ``~/.ssh/config`` and known_hosts) and ``LocalTransport`` implement it. Its
parts live beside it (process.py, ssh_target.py, ssh_errors.py, ssh_trust.py) and are re-exported
here: the rest of labtasker imports from this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shlex
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from dispatcher.errors import ConnectionLostError, HostKeyError, TransportError
from dispatcher.transport.errors import _detail, _raise_mapped, map_ssh_error
from dispatcher.transport.process import STDERR_LIMIT, ByteReader, ByteWriter, Process, _Proc
from dispatcher.transport.target import Endpoint, SSHOptions, SSHTarget, parse_ssh_target
from dispatcher.transport.trust import _client_class, _read_known_hosts, _record_host_key

if TYPE_CHECKING:  # importing asyncssh costs ~200 ms: only commands that use SSH pay for it
    import asyncssh

    from dispatcher.transport.outputs import FetchReport

__all__ = [
    "LINE_LIMIT",
    "STDERR_LIMIT",
    "ByteReader",
    "ByteWriter",
    "Endpoint",
    "HostTransport",
    "LocalTransport",
    "Process",
    "SSHOptions",
    "SSHTarget",
    "SSHTransport",
    "make_transport",
    "map_ssh_error",
    "parse_ssh_target",
]

#: Longest stdout line a local process may send (asyncio's default, 64 KiB, is too small).
LINE_LIMIT = 16 * 1024 * 1024
_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
#: At most this many connections are set up at once through one ProxyJump host: beyond its
#: MaxStartups (OpenSSH's default, 10:30:100, starts at 10) sshd drops new unauthenticated
#: connections at random, and a lab with dozens of servers behind one bastion opens them all at
#: once. Connections made directly are not limited: each goes to its own host's sshd.
JUMP_HANDSHAKES = 8
_jump_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)
_DEFAULT_KEYS = ("id_ed25519_sk", "id_ecdsa_sk", "id_ed448", "id_ed25519", "id_ecdsa", "id_rsa")


class HostTransport(Protocol):
    """One host: ``connect`` (re)opens the connection, ``start`` runs an argv, ``close`` ends."""

    name: str

    async def connect(self) -> None: ...
    async def start(self, argv: Sequence[str]) -> Process: ...
    async def close(self) -> None: ...
    async def fetch_files(
        self, workdir: str | None, globs: Sequence[str], local_dir: Path, max_bytes: int
    ) -> FetchReport:
        """Copy files matching ``globs`` under ``workdir`` into ``local_dir`` (see outputs.py)."""
        ...


class _Transport:
    name: str
    _procs: list[_Proc]

    async def connect(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _track(self, proc: _Proc) -> _Proc:
        self._procs = [p for p in self._procs if not p.stderr_task.done()] + [proc]
        return proc

    async def _settle(self) -> None:
        procs, self._procs = self._procs, []
        for proc in procs:
            await proc.settle()


class LocalTransport(_Transport):
    """Runs argvs on this machine (a host named ``local``, or one with ``ssh = false``).

    As with a remote shell, a missing program gives exit status 127 and a message on stderr,
    and each process gets its own session, so a Ctrl-C aimed at labtasker does not reach it.
    """

    def __init__(self, name: str = "local") -> None:
        self.name = name
        self._procs = []

    async def connect(self) -> None:
        """Nothing to open."""

    async def start(self, argv: Sequence[str]) -> Process:
        """Run ``argv`` via ``sh -c 'exec "$@"'`` (the shell gives 127 for a missing program)."""
        raw = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", 'exec "$@"', "sh", *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=LINE_LIMIT,
        )  # fmt: skip

        def lost(exc: Exception) -> TransportError | None:
            if not isinstance(exc, OSError):
                return None
            msg = f"{self.name}: {argv[0]!r} closed its pipes ({_detail(exc)})"
            return ConnectionLostError(msg, host=self.name)

        def stop() -> None:
            with contextlib.suppress(ProcessLookupError):
                raw.kill()

        return self._track(_Proc(raw, lost, stop))

    async def close(self) -> None:
        """Stop processes still running (their pipes belong to this event loop)."""
        await self._settle()

    async def fetch_files(
        self, workdir: str | None, globs: Sequence[str], local_dir: Path, max_bytes: int
    ) -> FetchReport:
        """Copy this machine's files matching ``globs`` under ``workdir`` into ``local_dir``."""
        from dispatcher.transport.outputs import fetch_local

        return await fetch_local(workdir, globs, local_dir, max_bytes)


def _jump_slot(jump: str | None) -> contextlib.AbstractAsyncContextManager[Any]:
    """One of the ``JUMP_HANDSHAKES`` slots of the ProxyJump host ``jump`` (none to take
    for a direct connection)."""
    if jump is None:
        return contextlib.nullcontext()
    slots = _jump_slots.setdefault(asyncio.get_running_loop(), {})
    return slots.setdefault(jump, asyncio.Semaphore(JUMP_HANDSHAKES))


class SSHTransport(_Transport):
    """One asyncssh connection to a host; every ``start`` opens a new session on it.

    ``connect`` opens the connection, again if it was lost; ``start`` connects on first use but
    never silently after a loss: it raises ``ConnectionLostError`` until ``connect`` is called.
    """

    def __init__(self, name: str, *, target: str | None = None, options: SSHOptions) -> None:
        self.name, self.options = name, options
        self.target = parse_ssh_target(target) if target else None
        t = self.target
        args = f"{t.user}@{t.host}" if t and t.user else t.host if t else name
        #: What ``name`` resolved to; filled in by ``connect`` from ~/.ssh/config.
        self.endpoint = Endpoint(
            name=name,
            host=t.host if t else name,
            port=(t.port if t else None) or 22,
            user=(t.user if t else None) or getpass.getuser(),
            ssh_args=f"-p {t.port} {args}" if t and t.port else args,
            config_label=str(options.config_path or "~/.ssh/config"),
            connect_timeout=options.connect_timeout,
        )
        self._conn: asyncssh.SSHClientConnection | None = None
        self._client: Any = None  # the asyncssh client object of ``_conn``
        self._lost: Exception | None = None
        self._lock = asyncio.Lock()
        self._procs = []

    @property
    def connected(self) -> bool:
        """Whether the connection is open (as far as we know: keepalives find dead ones)."""
        return self._conn is not None and self._lost is None

    async def connect(self) -> None:
        """Open the connection unless it is open; raise a ``TransportError`` on failure."""
        async with self._lock:
            if not self.connected:
                await self._drop()
                self._conn = await self._open()

    async def _open(self) -> asyncssh.SSHClientConnection:
        import asyncssh

        t, o = self.target, self.options
        kwargs: dict[str, Any] = {
            "host": t.host if t else self.name,
            "port": (t.port if t else None) or (),  # () = from ~/.ssh/config, else 22
            "username": (t.user if t else None) or (),
            "config": [str(o.config_path)] if o.config_path else (),
            "connect_timeout": o.connect_timeout,
            "keepalive_interval": o.keepalive_interval,
            "keepalive_count_max": o.keepalive_count_max,
        }
        client: Any = None
        try:
            opts = await asyncssh.SSHClientConnectionOptions.construct(**kwargs)
            if not opts.config.get("Ciphers"):
                # AES-GCM first (OpenSSH puts ChaCha20 first): asyncssh encrypts each packet
                # with one call for it against three for ChaCha20-Poly1305, and AES-NI makes
                # it cheaper for sshd too. Both are authenticated ciphers; a Ciphers line wins.
                kwargs["encryption_algs"] = _CIPHERS
            self.endpoint = self._resolve(opts)
            known = await asyncio.to_thread(_read_known_hosts, self.endpoint.known_hosts_files)
            client = _client_class()(self, known, o.accept_new_host_keys)
            async with _jump_slot(self.endpoint.jump):
                # known_hosts is always passed explicitly: never None, so host keys are checked.
                conn: asyncssh.SSHClientConnection = await asyncssh.connect(
                    **kwargs, known_hosts=known, client_factory=lambda: client
                )
        except Exception as exc:
            if client is not None and client.accepted:  # as OpenSSH: accepted = recorded
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(_record_host_key, client.accepted, self.endpoint)
            verdict = client.known if client is not None else None
            ep = self.endpoint
            _raise_mapped(exc, lambda e: map_ssh_error(e, ep, connected=False,
                                                       host_key_known=verdict))  # fmt: skip
        self._client, self._lost = client, None  # from here on, its loss is reported
        if client.accepted:
            try:
                await asyncio.to_thread(_record_host_key, client.accepted, self.endpoint)
            except OSError as exc:
                self._client = None
                conn.close()
                await conn.wait_closed()
                raise HostKeyError(
                    f"{self.name}: cannot record its new host key in "
                    f"{self.endpoint.known_hosts_path} ({_detail(exc)}); fix that file's "
                    f"permissions or add the key with `ssh {self.endpoint.ssh_args}`",
                    host=self.name,
                ) from exc
        return conn

    def _resolve(self, opts: Any) -> Endpoint:
        config = opts.config
        keys = [str(f) for f in config.get("IdentityFile", ()) or ()] or [
            f"~/.ssh/{k}" for k in _DEFAULT_KEYS if Path(f"~/.ssh/{k}").expanduser().exists()
        ]
        user_files = config.get("UserKnownHostsFile")
        if user_files is None:
            user_files = ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]
        global_files = config.get("GlobalKnownHostsFile") or [
            "/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"]  # fmt: skip
        files = [os.path.expanduser(str(f)) for f in [*user_files, *global_files]]
        return Endpoint(
            name=self.name,
            host=opts.host,
            port=opts.port,
            user=opts.username,
            ssh_args=self.endpoint.ssh_args,
            host_from_config=opts.host != opts.orig_host,
            config_label=self.endpoint.config_label,
            jump=opts.tunnel if isinstance(opts.tunnel, str) else None,
            identity_files=tuple(keys),
            agent=bool(opts.agent_path),
            known_hosts_files=tuple(f for f in files if os.path.isfile(f)),
            known_hosts_path=files[0] if user_files else os.path.expanduser("~/.ssh/known_hosts"),
            connect_timeout=self.options.connect_timeout,
        )

    def _map_session_error(self, exc: Exception) -> TransportError | None:
        return map_ssh_error(exc, self.endpoint, connected=True)

    async def start(self, argv: Sequence[str]) -> Process:
        """Run ``argv``, quoted with ``shlex.join`` for the remote shell, in a new session."""
        if self._conn is None and self._lost is None:
            await self.connect()
        if self._conn is None or self._lost is not None:
            _raise_mapped(self._lost or ConnectionResetError("closed"), self._map_session_error)
        try:
            raw = await self._conn.create_process(shlex.join(argv), encoding=None)
        except Exception as exc:
            _raise_mapped(exc, self._map_session_error)

        def stop() -> None:
            with contextlib.suppress(OSError):
                raw.stdin.write_eof()  # a program reading stdin ends even if the signal is refused
            _signal_until_gone(raw, 0.05)

        return self._track(_Proc(raw, self._map_session_error, stop))

    def _connection_lost(self, client: Any, exc: Exception | None) -> None:
        if client is self._client:  # not a connection we dropped or never finished opening
            self._lost = exc or ConnectionResetError("connection closed")

    async def _drop(self) -> None:
        conn, self._conn, self._client = self._conn, None, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        await self._settle()

    async def close(self) -> None:
        """Close the connection; remote processes without a terminal keep running."""
        async with self._lock:
            await self._drop()
            self._lost = None

    async def fetch_files(
        self, workdir: str | None, globs: Sequence[str], local_dir: Path, max_bytes: int
    ) -> FetchReport:
        """Copy host files matching ``globs`` under ``workdir`` over SFTP on this connection."""
        from dispatcher.transport.outputs import fetch_sftp

        if self._conn is None or self._lost is not None:
            _raise_mapped(self._lost or ConnectionResetError("closed"), self._map_session_error)
        try:
            return await fetch_sftp(self._conn, workdir, globs, local_dir, max_bytes)
        except Exception as exc:
            _raise_mapped(exc, self._map_session_error)


def _signal_until_gone(raw: Any, delay: float) -> None:
    """Send KILL, again after ``delay`` s (doubling) while the process lives: sshd signals the
    session's process group, which does not exist yet if the signal beats its setsid()."""
    if raw.returncode is not None:
        return
    try:
        raw.kill()
    except OSError:
        return  # the channel is gone: so is anything to stop
    if delay < 2:
        with contextlib.suppress(RuntimeError):  # no running loop: one try is all we can do
            asyncio.get_running_loop().call_later(delay, _signal_until_gone, raw, delay * 2)


def make_transport(
    name: str,
    *,
    ssh_target: str | None = None,
    local: bool = False,
    options: SSHOptions | None = None,
) -> HostTransport:
    """The transport for one host: local if ``local`` or if it is named ``local`` and has no
    ``ssh_target``; otherwise SSH to ``ssh_target`` or, without one, to the alias ``name``."""
    if local or (name == "local" and ssh_target is None):
        return LocalTransport(name)
    return SSHTransport(name, target=ssh_target, options=options or SSHOptions())
