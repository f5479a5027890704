"""The one place asyncssh/OS errors become labtasker's ``TransportError``s (``map_ssh_error``).

Each message names the host and its address, and says what to do next; errors that are not the
network's are left alone, so a bug shows its traceback.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import NoReturn

from dispatcher.errors import (
    AuthError,
    ConnectError,
    ConnectionLostError,
    HostKeyError,
    TransportError,
)
from dispatcher.transport.target import Endpoint

_Mapper = Callable[[Exception], "TransportError | None"]


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
