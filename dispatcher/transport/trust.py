"""Host key trust, as OpenSSH does it: known_hosts read for verification, accept-new keys
recorded, and the asyncssh client class that tells an unknown host key from a changed one.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dispatcher.transport.target import Endpoint

if TYPE_CHECKING:  # importing asyncssh costs ~200 ms: only commands that use SSH pay for it
    import asyncssh


class ConnectionOwner(Protocol):
    """What the client class tells about its connection: the transport that opened it."""

    def _connection_lost(self, client: Any, exc: Exception | None) -> None: ...


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

        def __init__(self, owner: ConnectionOwner, known_hosts: Any, accept_new: bool) -> None:
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
