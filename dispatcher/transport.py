"""The boundary between labtasker and the network: run an argv on a host, over SSH or locally.

``HostTransport``/``Process`` are the small interface the rest of labtasker uses; ``SSHTransport``
(asyncssh, honouring ``~/.ssh/config`` and known_hosts) and ``LocalTransport`` implement it. Every
asyncssh/OS error is translated here, once, into a ``TransportError`` (``map_ssh_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import os
import shlex
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, Self

from dispatcher.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    HostKeyError,
    TransportError,
)

if TYPE_CHECKING:  # importing asyncssh costs ~200 ms: only commands that use SSH pay for it
    import asyncssh

    from dispatcher.outputs import FetchReport

#: How much of a process's stderr is kept (the tail): enough for a traceback, bounded.
STDERR_LIMIT = 64 * 1024
#: Longest stdout line a local process may send (asyncio's default, 64 KiB, is too small).
LINE_LIMIT = 16 * 1024 * 1024
_DEFAULT_KEYS = ("id_ed25519_sk", "id_ecdsa_sk", "id_ed448", "id_ed25519", "id_ecdsa", "id_rsa")
_Mapper = Callable[[Exception], "TransportError | None"]


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


@dataclass(frozen=True)
class SSHOptions:
    """How SSH connections are made; ``config_path`` None means ``~/.ssh/config``."""

    connect_timeout: float = 10.0
    keepalive_interval: float = 2.0
    keepalive_count_max: int = 3
    accept_new_host_keys: bool = False
    config_path: Path | None = None


@dataclass(frozen=True)
class SSHTarget:
    """``[user@]host[:port]`` from hosts.toml's ``ssh =``; None parts come from ~/.ssh/config."""

    host: str
    user: str | None = None
    port: int | None = None


def parse_ssh_target(text: str) -> SSHTarget:
    """Parse "host", "user@host", "host:port", "user@[v6]:port" (a bare IPv6 address is a host)."""
    user, _, rest = text.strip().rpartition("@")
    host, port = rest, ""
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        host, port = (host, after[1:]) if after[:1] in ("", ":") else ("", "")
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    bad_port = port and not (port.isdigit() and 0 < int(port) < 65536)
    if not host or bad_port or any(c.isspace() for c in text.strip()):
        raise ConfigError(
            f"bad ssh target {text!r}: write host, user@host, host:port or user@[ipv6]:port"
        )
    return SSHTarget(host=host, user=user or None, port=int(port) if port else None)


@dataclass(frozen=True)
class Endpoint:
    """What a host's name resolved to (config applied); error messages are built from it."""

    name: str
    host: str
    port: int = 22
    user: str = ""
    ssh_args: str = ""  # how to reach it with OpenSSH: "gpu-a" or "-p 2200 alice@gpu-b"
    host_from_config: bool = False
    config_label: str = "~/.ssh/config"
    jump: str | None = None
    identity_files: tuple[str, ...] = ()
    agent: bool = False
    known_hosts_files: tuple[str, ...] = ()  # read for verification (those that exist)
    known_hosts_path: str = "~/.ssh/known_hosts"  # where accept-new writes
    connect_timeout: float = 10.0

    @property
    def address(self) -> str:
        """``host:port``, or ``[v6]:port``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def known_hosts_entry(self) -> str:
        """The name OpenSSH files this host under in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def _detail(exc: BaseException) -> str:
    text = getattr(exc, "reason", "") or getattr(exc, "strerror", "") or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__  # one line: the CLI prints one


def map_ssh_error(
    exc: BaseException, ep: Endpoint, *, connected: bool, host_key_known: bool | None = None
) -> TransportError | None:
    """Translate an asyncssh/OS error into a ``TransportError``; None if it is not ours to map.

    ``connected``: the connection was up (so an error means it was lost). ``host_key_known``:
    whether known_hosts held another key for the host (None: not looked up).
    """
    import asyncssh

    name, at, why = ep.name, f"{ep.name} ({ep.address})", _detail(exc)
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        files = ", ".join(ep.known_hosts_files) or ep.known_hosts_path
        if host_key_known:
            return HostKeyError(
                f"{at}: WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! Its host key differs "
                f"from the one in {files}; someone could be eavesdropping on you right now "
                "(man-in-the-middle attack), or the host key was just replaced; if the change "
                f"is expected, remove the old key with `ssh-keygen -R '{ep.known_hosts_entry}'`"
                " and connect again",
                host=name,
            )
        what = "not in known_hosts" if host_key_known is False else f"not trusted ({why})"
        return HostKeyError(
            f"{at}: host key {what} ({files}); run `ssh {ep.ssh_args}` once to check and "
            "accept it, or pass --accept-new-host-keys",
            host=name,
        )
    if isinstance(exc, asyncssh.PermissionDenied | asyncssh.IllegalUserName):
        keys = ", ".join(ep.identity_files) or "none found"
        agent = " and the ssh-agent's keys" if ep.agent else ""
        return AuthError(
            f"{at}: user {ep.user!r} was refused ({why}); keys tried: {keys}{agent}; add your "
            f"key with `ssh-copy-id {ep.ssh_args}` or set IdentityFile in {ep.config_label}",
            host=name,
        )
    if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        return AuthError(
            f"{name}: cannot load an SSH key ({why}); labtasker cannot ask for passphrases: "
            f"add the key to ssh-agent (ssh-add) or fix IdentityFile in {ep.config_label}",
            host=name,
        )
    if isinstance(exc, asyncssh.ConfigParseError):
        return ConnectError(f"{name}: cannot read {ep.config_label} ({why}); fix it", host=name)
    if isinstance(exc, asyncssh.ChannelOpenError):
        if connected:
            return ConnectionLostError(
                f"{at}: the server refused a new session ({why}); the connection is closing, "
                "or too many sessions are open (sshd's MaxSessions, default 10)",
                host=name,
            )
        return ConnectError(
            f"{at}: the jump host {ep.jump or ''} could not open a connection to {ep.address} "
            f"({why}); check HostName, Port and ProxyJump for {name} in {ep.config_label}",
            host=name,
        )
    if not isinstance(exc, asyncssh.Error | OSError | EOFError):
        return None  # not the network's: a bug, left to show its traceback
    if connected:
        return ConnectionLostError(
            f"{at}: connection lost ({why}); check the host with `ssh {ep.ssh_args} true`; "
            "labtasker reconnects when it answers",
            host=name,
        )
    if isinstance(exc, socket.gaierror):
        where = f"the HostName given for {name} in" if ep.host_from_config else "not in"
        return ConnectError(
            f"{name}: cannot resolve host name {ep.host!r} ({where} {ep.config_label} and not "
            "in DNS); check the Host entry or hosts.toml `ssh =`",
            host=name,
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"{at}: connection refused; is sshd running?", host=name)
    if isinstance(exc, TimeoutError):
        return ConnectError(
            f"{at}: no answer within {ep.connect_timeout:g} s; is the host up and reachable "
            "(VPN, firewall, ProxyJump)?",
            host=name,
        )
    return ConnectError(
        f"{at}: cannot connect ({why}); `ssh -v {ep.ssh_args}` shows more", host=name
    )


def _raise_mapped(exc: Exception, mapper: _Mapper) -> NoReturn:
    mapped = mapper(exc)
    if mapped is None or mapped is exc:
        raise exc
    raise mapped from exc


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
        from dispatcher.outputs import fetch_local

        return await fetch_local(workdir, globs, local_dir, max_bytes)


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
            self.endpoint = self._resolve(opts)
            known = await asyncio.to_thread(_read_known_hosts, self.endpoint.known_hosts_files)
            client = _client_class()(self, known, o.accept_new_host_keys)
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
        from dispatcher.outputs import fetch_sftp

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


def _read_known_hosts(files: Sequence[str]) -> asyncssh.SSHKnownHosts:
    """All known_hosts files as one list (lines asyncssh cannot parse are skipped, as OpenSSH
    does). The result is never None, so host keys are always verified."""
    import asyncssh

    lines: list[str] = []
    for name in files:
        with contextlib.suppress(OSError):
            lines += Path(name).read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        return asyncssh.import_known_hosts("\n".join(lines))
    except ValueError:
        good = []
        for line in lines:
            with contextlib.suppress(ValueError):
                good.append((asyncssh.import_known_hosts(line), line)[1])
        return asyncssh.import_known_hosts("\n".join(good))


@dataclass(frozen=True)
class _AcceptedKey:
    host: str
    port: int
    key: Any


def _record_host_key(accepted: _AcceptedKey, ep: Endpoint) -> None:
    """Append an accepted key to the user's known_hosts (made 0600, in a 0700 dir if new)."""
    path = Path(ep.known_hosts_path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    entry = accepted.host if accepted.port == 22 else f"[{accepted.host}]:{accepted.port}"
    key = " ".join(accepted.key.export_public_key("openssh").decode().split()[:2])
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        lead = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        os.write(fd, lead + f"{entry} {key}\n".encode())  # one write: appends do not interleave
    finally:
        os.close(fd)


@functools.cache
def _client_class() -> type[Any]:
    import asyncssh

    class Client(asyncssh.SSHClient):
        """Tells an unknown host key from a changed one, and implements accept-new."""

        def __init__(self, owner: SSHTransport, known_hosts: Any, accept_new: bool) -> None:
            self.owner, self.known_hosts, self.accept_new = owner, known_hosts, accept_new
            self.known: bool | None = None
            self.accepted: _AcceptedKey | None = None

        def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
            # asyncssh asks only about a key known_hosts does not trust: if known_hosts has any
            # key for this host, the key changed (refused even with accept-new, as OpenSSH).
            trusted, ca_keys = self.known_hosts.match(host, addr, None if port == 22 else port)[:2]
            self.known = bool(trusted or ca_keys)
            if self.known or not self.accept_new:
                return False
            self.accepted = _AcceptedKey(host, port, key)
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            self.owner._connection_lost(self, exc)

    return Client


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
