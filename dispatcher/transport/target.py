"""Where a host is reached over SSH: hosts.toml's ``ssh =`` target, the connection options, and
the ``Endpoint`` that ~/.ssh/config resolved a host to (error messages are built from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dispatcher.config.values import split_ssh_target


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
    """Parse "host", "user@host", "host:port", "user@[v6]:port" by hosts.toml's one rule
    (``config.values.split_ssh_target``: nothing that could read as an ssh option)."""
    user, host, port = split_ssh_target(text)
    return SSHTarget(host=host, user=user, port=port)


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
