"""Checkers for the values of hosts.toml settings, the size and duration parsers, and TOML reading.

Each checker takes a value as TOML gives it and returns it normalised, or raises ConfigError with
a message that starts where "`key` " leaves off ("must be ..., got ..."); ``hosts`` adds the
file, line and host. Messages show values short (``show``) and never show env values.
"""

from __future__ import annotations

import contextlib
import re
import reprlib
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn

from dispatcher.core.globs import glob_problem
from dispatcher.core.values import DURATION_FORMS, duration_seconds, size_bytes
from dispatcher.errors import ConfigError

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist = 3, 40, 40, 6


def show(value: Any) -> str:
    """A short repr: messages stay one line even for huge or deeply nested values."""
    return _REPR.repr(value)


def _fail(what: str, got: Any) -> NoReturn:
    raise ConfigError(f"must be {what}, got {show(got)}")


def integer(lo: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        # bool is an int subclass: `slots = true` must not mean 1.
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            _fail(f"an integer >= {lo}", v)
        return v

    return check


def string(empty_ok: bool = False) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or (not v.strip() and not empty_ok) or "\0" in v:
            _fail("a string" if empty_ok else "a non-empty string", v)
        return v

    return check


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        _fail("true or false", v)
    return v


def size(v: Any) -> int:
    n = size_bytes(v)
    if n is None:  # no match, a negative count, or too many digits for a float
        _fail('a byte count or a size like "500MiB", "1GiB", "2GB"', v)
    return n


def gpu_indices(v: Any) -> tuple[int, ...]:
    """A list of distinct GPU indices (``gpu_order``)."""
    if not isinstance(v, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v
    ):
        _fail("a list of GPU indices like [2, 3, 0, 1]", v)
    if len(set(v)) != len(v):
        _fail("a list of distinct GPU indices", v)
    return tuple(v)


def duration(positive: bool) -> Callable[[Any], float]:
    what = ("a duration > 0" if positive else "a duration >= 0") + f" {DURATION_FORMS}"

    def check(v: Any) -> float:
        seconds = duration_seconds(v)
        if seconds is None or (positive and seconds == 0):
            _fail(what, v)
        return seconds

    return check


def parse_size(text: str | int) -> int:
    """Bytes in ``text``: ``1024``, ``"500MiB"``, ``"1GiB"``, ``"2GB"`` (KB/MB/GB: 1000-based)."""
    try:
        return size(text)
    except ConfigError as err:
        raise ConfigError(f"size {err}") from None


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``: ``30``, ``"30s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1h30m"``."""
    try:
        return duration(positive=False)(text)
    except ConfigError as err:
        raise ConfigError(f"duration {err}") from None


ALIAS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,252}")
_TARGET = re.compile(
    r"(?:([^@\s:/-][^@\s:/]*)@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)(?::(\d{1,5}))?"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def split_ssh_target(text: str) -> tuple[str | None, str, int | None]:
    """``"alice@gpu-b.lab.org:2200"`` -> ``("alice", "gpu-b.lab.org", 2200)``; IPv6 in brackets."""
    m = _TARGET.fullmatch(text.strip())
    if m is None or not 0 < int(m[3] or 22) < 65536:
        raise ConfigError(
            f"ssh target {show(text)} is not [USER@]HOST[:PORT], e.g. alice@gpu-b:2200"
        )
    return m[1], m[2].strip("[]"), int(m[3]) if m[3] else None


def ssh_target(v: Any) -> str | bool:
    if isinstance(v, bool):
        return v
    with contextlib.suppress(ConfigError):
        if isinstance(v, str) and split_ssh_target(v):
            return v.strip()
    _fail('false (run locally) or "[USER@]HOST[:PORT]", e.g. "alice@gpu-b:2200"', v)


def gpu_list(v: Any) -> Literal["auto"] | tuple[int, ...]:
    what = '"auto", 0 (CPU-only) or a list of distinct GPU indices >= 0 like [0, 2]'
    if v == "auto" and isinstance(v, str):
        return "auto"
    if isinstance(v, int) and not isinstance(v, bool) and v == 0:
        return ()
    ints = isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    if not ints or any(i < 0 for i in v) or len(set(v)) != len(v):
        _fail(what, v)
    return tuple(sorted(v))


def _kind(value: Any) -> str:
    """What ``value`` is, never what it holds: env values may be secrets (``secret_env``)."""
    if isinstance(value, str):
        return "a string containing NUL"
    names = {bool: "a boolean", int: "an integer", float: "a number", list: "a list"}
    return names.get(type(value), "a table" if isinstance(value, Mapping) else "a date or time")


def env_table(v: Any) -> dict[str, str]:
    if not isinstance(v, Mapping):
        raise ConfigError(f'must be a table like {{ WANDB_MODE = "offline" }}, got {_kind(v)}')
    for k, val in v.items():
        if not isinstance(k, str) or not _ENV_NAME.fullmatch(k):
            raise ConfigError(f"has {show(k)}, which is not a variable name (letters, digits, _)")
        if not isinstance(val, str) or "\0" in val:
            # Silent str() would turn true into "True"; the user should say what the shell sees.
            raise ConfigError(
                f'value of {k} must be a string (quote it: {k} = "..."), got {_kind(val)}'
            )
    return dict(v)


def env_names(v: Any) -> frozenset[str]:
    if not isinstance(v, list) or not all(isinstance(k, str) and _ENV_NAME.fullmatch(k) for k in v):
        _fail('a list of variable names like ["WANDB_API_KEY"]', v)
    return frozenset(v)


def globs(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or any(glob_problem(g) for g in v):
        _fail('a list of glob patterns inside workdir, like ["out/*.json"]', v)
    return tuple(v)


def parse_toml(text: str, path: Path) -> Any:
    """The parsed TOML of a hosts file; syntax errors as one ``file:line:col`` ConfigError."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: values nested too deeply to read") from None
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        loc = f"{path}:{m[1]}:{m[2]}" if m else f"{path}:{max(len(text.splitlines()), 1)}"
        message = message[: m.start()] if m else message.replace(" (at end of document)", "")
        dup = re.fullmatch(r"Cannot declare \('hosts', '([^']*)'\) twice", message)
        if dup:
            message = (
                f"duplicate host `{dup[1]}`: [hosts.{dup[1]}] appears twice; merge or rename one"
            )
        elif message == "Cannot overwrite a value":
            message = "a key or table is given twice"
        raise ConfigError(f"{loc}: {message}") from None
