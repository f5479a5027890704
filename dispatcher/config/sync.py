"""The ``[sync]`` table of hosts.toml: which files make up the project snapshot that ``queue add``
records, and its limits. Checks values only; ``config.hosts`` finds the table and the file's
lines, ``dispatcher.snapshot`` applies the settings.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.config.values import duration, show, size, string
from dispatcher.errors import ConfigError

MIB = 1024**2


@dataclass(frozen=True)
class SyncSpec:
    """``[sync]`` with its defaults; docs/queue.md explains each field."""

    root: str | None = None  # the project directory (relative to hosts.toml's); None = default
    include: tuple[str, ...] = ()  # globs: only these paths (all when empty)
    exclude: tuple[str, ...] = ()  # globs: never these paths
    max_size: int = 200 * MIB  # a larger tree is refused at `queue add`
    keep: float = 7 * 86400.0  # seconds a finished run's directory stays on its host


#: [sync] as when the table (or the whole hosts file) is absent.
NO_SYNC = SyncSpec()


def _patterns(v: Any) -> tuple[str, ...]:
    ok = isinstance(v, list) and all(
        isinstance(p, str)
        and p.strip()
        and "\0" not in p
        and not p.startswith(("/", "~"))
        and ".." not in p.split("/")
        for p in v
    )
    if not ok:
        raise ConfigError(
            'must be a list of glob patterns relative to the project, like ["data/", "*.ckpt"],'
            f" got {show(v)}"
        )
    return tuple(v)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "root": string(),
    "include": _patterns,
    "exclude": _patterns,
    "max_size": size,
    "keep": duration(positive=False),
}
SYNC_KEYS: tuple[str, ...] = tuple(_CHECKS)


def sync_from_table(table: Any, error: Callable[[str | None, str], ConfigError]) -> SyncSpec:
    """Check a ``[sync]`` table; ``error(key, message)`` makes the ConfigError (with the file
    and line) for the first bad key."""
    if not isinstance(table, Mapping):
        raise error(None, f"must be a table, got {show(table)}")
    checked: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _CHECKS:
            close = difflib.get_close_matches(str(key), SYNC_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"valid keys: {', '.join(SYNC_KEYS)}"
            raise error(str(key), f"unknown key {show(key)}; {hint}")
        try:
            checked[key] = _CHECKS[key](value)
        except ConfigError as err:
            raise error(key, f"`{key}` {err}") from None
    return SyncSpec(**checked)
