"""The transport's error boundary: every asyncssh/OS error we can receive becomes a TransportError.

Walks asyncssh's exception classes (and the OS ones), so a new asyncssh release that adds one
fails here until it is mapped or listed, with a reason, as one labtasker cannot receive.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import socket
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    ConnectionLostError,
    HostKeyError,
    TransportError,
)
from dispatcher.transport import transports as transport
from dispatcher.transport.transports import (
    Endpoint,
    LocalTransport,
    SSHOptions,
    SSHTarget,
    SSHTransport,
    make_transport,
    map_ssh_error,
    parse_ssh_target,
)

#: asyncssh exceptions labtasker cannot receive, and why. Anything else must be mapped.
NOT_RECEIVED = {
    "SFTPError": "labtasker uses no SFTP",
    "ChannelListenError": "labtasker opens no port forwards",
    "ProcessError": "raised by run(check=True), which labtasker does not call",
    "BreakReceived": "delivered to servers and to pty sessions only",
    "SignalReceived": "delivered to servers only",
    "TerminalSizeChanged": "delivered to servers only",
    "PasswordChangeRequired": "raised by servers' password checks",
    "KeyExportError": "labtasker exports no keys",
    "KeyGenerationError": "labtasker generates no keys",
}

ENDPOINT = Endpoint(
    name="gpu-a",
    host="10.0.0.5",
    port=22,
    user="alice",
    ssh_args="gpu-a",
    identity_files=("~/.ssh/id_ed25519",),
    known_hosts_files=("/home/alice/.ssh/known_hosts",),
)

ARGUMENTS: dict[str, Any] = {
    "code": 2,
    "lang": "en-US",
    "msec": 0,
    "signal": "TERM",
    "width": 80,
    "height": 24,
    "pixwidth": 0,
    "pixheight": 0,
    "prompt": "new password",
    "unknown_names": (),
}


def _exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for value in vars(asyncssh).values():
        if inspect.isclass(value) and issubclass(value, BaseException) and value not in found:
            found.append(value)
    todo = [OSError]
    while todo:  # OSError and its subclasses from builtins/socket: what the network raises
        cls = todo.pop()
        if cls.__module__ in ("builtins", "socket") and cls not in found:
            found.append(cls)
        todo += cls.__subclasses__()
    return [*found, EOFError, asyncio.IncompleteReadError]


def _received(cls: type[BaseException]) -> bool:
    return not any(base.__name__ in NOT_RECEIVED for base in cls.__mro__)


def _build(cls: type[BaseException], reason: str) -> BaseException:
    if issubclass(cls, OSError) and cls.__module__ in ("builtins", "socket"):
        return cls(111, reason)
    if cls is asyncio.IncompleteReadError:
        return cls(b"partial", 10)
    try:
        signature = inspect.signature(cls)
    except ValueError:  # __init__ inherited from a builtin exception: takes a message
        return cls(reason)
    params = [
        p for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]  # fmt: skip
    if not params:
        return cls(reason)
    kwargs = {p.name: reason if p.name == "reason" else ARGUMENTS[p.name] for p in params}
    return cls(**kwargs)


RECEIVED = [c for c in _exception_classes() if _received(c)]


def test_the_walk_finds_the_classes_that_matter() -> None:
    names = {c.__name__ for c in RECEIVED}
    for needed in ("DisconnectError", "PermissionDenied", "HostKeyNotVerifiable",
                   "ChannelOpenError", "ConnectionLost", "ConnectionRefusedError",
                   "gaierror", "TimeoutError", "BrokenPipeError"):  # fmt: skip
        assert needed in names


def test_not_received_names_real_classes() -> None:
    names = {c.__name__ for c in _exception_classes()}
    assert set(NOT_RECEIVED) <= names  # a stale entry would hide nothing, but mislead


@pytest.mark.parametrize("cls", RECEIVED, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_received_error_maps_to_a_transport_error(cls: type[BaseException]) -> None:
    for connected in (False, True):
        mapped = map_ssh_error(_build(cls, "why"), ENDPOINT, connected=connected)
        assert isinstance(mapped, TransportError), f"{cls.__name__}: map it, or list it above"
        assert mapped.host == "gpu-a"


@given(
    cls=st.sampled_from(RECEIVED),
    connected=st.booleans(),
    known=st.sampled_from([None, False, True]),
    reason=st.text(max_size=60),
)
def test_mapped_messages_are_one_line_naming_the_host(
    cls: type[BaseException], connected: bool, known: bool | None, reason: str
) -> None:
    exc = _build(cls, reason)
    message = str(map_ssh_error(exc, ENDPOINT, connected=connected, host_key_known=known))
    assert message.startswith("gpu-a")
    assert len(message.splitlines()) == 1  # the CLI prints one line


def test_errors_that_are_not_the_networks_are_left_alone() -> None:
    assert map_ssh_error(ValueError("a bug"), ENDPOINT, connected=False) is None
    assert map_ssh_error(KeyError("a bug"), ENDPOINT, connected=True) is None


def _map(exc: BaseException, *, connected: bool = False, known: bool | None = None) -> Any:
    return map_ssh_error(exc, ENDPOINT, connected=connected, host_key_known=known)


def test_connect_failures_say_what_to_do() -> None:
    refused = _map(ConnectionRefusedError(111, "Connection refused"))
    assert type(refused) is ConnectError
    assert str(refused) == "gpu-a (10.0.0.5:22): connection refused; is sshd running?"
    timeout = _map(TimeoutError())
    assert type(timeout) is ConnectError
    assert str(timeout).startswith("gpu-a (10.0.0.5:22): no answer within 10 s")
    resolve = map_ssh_error(socket.gaierror(-2, "Name or service not known"),
                            Endpoint(name="x", host="x"), connected=False)  # fmt: skip
    assert str(resolve) == (
        "x: cannot resolve host name 'x' (not in ~/.ssh/config and not in DNS); "
        "check the Host entry or hosts.toml `ssh =`"
    )


def test_auth_failure_names_user_and_keys() -> None:
    err = _map(asyncssh.PermissionDenied("Permission denied for user alice on host 10.0.0.5"))
    assert type(err) is AuthError
    assert "user 'alice' was refused" in str(err)
    assert "keys tried: ~/.ssh/id_ed25519;" in str(err)
    assert "ssh-copy-id gpu-a" in str(err)


def test_host_key_unknown_and_changed_read_differently() -> None:
    exc = asyncssh.HostKeyNotVerifiable("Host key is not trusted for host 10.0.0.5")
    unknown, changed = _map(exc, known=False), _map(exc, known=True)
    assert type(unknown) is HostKeyError and type(changed) is HostKeyError
    assert "host key not in known_hosts" in str(unknown)
    assert "--accept-new-host-keys" in str(unknown)
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in str(changed)
    assert "ssh-keygen -R '10.0.0.5'" in str(changed)


def test_losses_after_connect_are_connection_lost() -> None:
    for exc in (asyncssh.ConnectionLost("Connection lost"), BrokenPipeError(),
                asyncssh.ChannelOpenError(2, "open failed"), TimeoutError()):  # fmt: skip
        assert type(_map(exc, connected=True)) is ConnectionLostError
    # during connect, a channel that cannot open is the jump host failing to reach the target
    assert type(_map(asyncssh.ChannelOpenError(2, "Connection refused"))) is ConnectError


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("gpu-b", SSHTarget("gpu-b")),
        ("alice@gpu-b.lab.example.org:2200", SSHTarget("gpu-b.lab.example.org", "alice", 2200)),
        ("gpu-b:2200", SSHTarget("gpu-b", None, 2200)),
        ("alice@gpu-b", SSHTarget("gpu-b", "alice")),
        ("[fe80::1]:2200", SSHTarget("fe80::1", None, 2200)),
        ("bob@[::1]", SSHTarget("::1", "bob")),
    ],
)
def test_parse_ssh_target(text: str, target: SSHTarget) -> None:
    assert parse_ssh_target(text) == target


@pytest.mark.parametrize(
    "text",
    ["", "alice@", "gpu:0", "gpu:99999", "gpu:x", "[::1]x", "a b", "::1", "-oProxyCommand=x"],
)
def test_bad_ssh_targets_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match=r"is not \[USER@\]HOST\[:PORT\]"):
        parse_ssh_target(text)


NAME = "abcdefghijklmnopqrstuvwxyz0123456789_-."


FIRST = "abcdefghijklmnopqrstuvwxyz0123456789_"  # never "-": it would read as an ssh option


@given(
    user=st.none() | st.builds(str.__add__, st.sampled_from(FIRST), st.text(NAME, max_size=7)),
    host=st.builds(str.__add__, st.sampled_from(FIRST), st.text(NAME, max_size=19)),
    port=st.none() | st.integers(1, 65535),
)
def test_parse_ssh_target_round_trips(user: str | None, host: str, port: int | None) -> None:
    text = (f"{user}@" if user else "") + host + (f":{port}" if port else "")
    assert parse_ssh_target(text) == SSHTarget(host, user, port)


def test_make_transport_chooses_by_host() -> None:
    assert isinstance(make_transport("local"), LocalTransport)
    assert isinstance(make_transport("gpu-a", local=True), LocalTransport)
    ssh = make_transport("gpu-a", ssh_target="alice@gpu-b:2200", options=SSHOptions())
    assert isinstance(ssh, SSHTransport)
    assert ssh.endpoint.ssh_args == "-p 2200 alice@gpu-b"
    assert isinstance(make_transport("local", ssh_target="gpu-b"), SSHTransport)


@pytest.mark.parametrize("module", ["transports", "process", "target", "errors", "trust"])
def test_asyncssh_is_imported_lazily(module: str) -> None:
    # ~200 ms at import: `labtasker --help` and local-only runs must not pay it.
    tree = ast.parse((Path(transport.__file__).parent / f"{module}.py").read_text())
    imported = [
        alias.name if isinstance(node, ast.Import) else node.module
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert "asyncssh" not in imported
