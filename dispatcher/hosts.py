"""hosts.toml: reading and checking it into frozen ``HostSpec`` records. Reads one file; no network.

Owns every host setting's default and every message about a bad hosts file. What a host *has*
right now (free GPUs, a live connection) is the engine's business, not this module's.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
import reprlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from dispatcher.errors import ConfigError

GIB = 1024**3


@dataclass(frozen=True)
class HostSpec:
    """One ``[hosts.NAME]`` table with ``[defaults]`` applied. docs/hosts.md explains each field."""

    name: str
    ssh: str | None  # connect here instead of the alias ``name``; None = the alias
    local: bool  # run on this machine without SSH (name "local", or ssh = false)
    gpus: Literal["auto"] | tuple[int, ...]  # () = CPU-only
    slots: int
    max_gpu_memory_used: int  # bytes
    workdir: str | None  # None = the remote home
    setup: str | None
    python: str
    env: Mapping[str, str]
    secret_env: frozenset[str]
    state_dir: str
    connect_timeout: float
    keepalive_interval: float
    keepalive_count_max: int
    lost_after: float
    kill_grace: float
    suspend_after_failures: int
    failure_window: float
    outputs: tuple[str, ...]
    enabled: bool
    slots_given: bool  # `slots` was set; otherwise it follows the GPU count (see slots_for)
    # `gpus` was written in the file. An unwritten "auto" on a host without nvidia-smi means a
    # CPU-only host; a written one is an error to report (the user expects GPUs there).
    gpus_given: bool = True
    outputs_max_size: int = GIB  # bytes of outputs copied back per task, at most

    def slots_for(self, gpu_count: int) -> int:
        """Slots offered once the host's GPU count is known: an unset ``slots`` is 1 without GPUs.

        Needed for ``gpus = "auto"``: before the first query the default cannot be known.
        """
        if self.slots_given or gpu_count > 0:
            return self.slots
        return max(self.slots, 1)


@dataclass(frozen=True)
class HostsConfig:
    """A whole hosts file: hosts in file order, and the ``[controller]`` settings."""

    path: Path
    hosts: tuple[HostSpec, ...]
    on_finish: str | None  # shell command run on the controller after each task ends


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist = 3, 40, 40, 6


def _show(value: Any) -> str:
    """A short repr: messages stay one line even for huge or deeply nested values."""
    return _REPR.repr(value)


def _fail(what: str, got: Any) -> NoReturn:
    raise ConfigError(f"must be {what}, got {_show(got)}")


def _int(lo: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        # bool is an int subclass: `slots = true` must not mean 1.
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            _fail(f"an integer >= {lo}", v)
        return v

    return check


def _text(empty_ok: bool = False) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or (not v.strip() and not empty_ok) or "\0" in v:
            _fail("a string" if empty_ok else "a non-empty string", v)
        return v

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        _fail("true or false", v)
    return v


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SIZE_UNITS |= {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def _size(v: Any) -> int:
    what = 'a byte count or a size like "500MiB", "1GiB", "2GB"'
    if isinstance(v, int) and not isinstance(v, bool):
        return v if v >= 0 else _fail(what, v)
    m = _SIZE.fullmatch(v.strip()) if isinstance(v, str) else None
    size = float(m[1]) * _SIZE_UNITS[(m[2] or "").lower()] if m else math.inf
    if not math.isfinite(size):  # no match, or too many digits for a float
        _fail(what, v)
    return int(size)


_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd]?)+")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(positive: bool) -> Callable[[Any], float]:
    what = ("a duration > 0" if positive else "a duration >= 0") + ' like 30, "30s", "10m", "2h"'

    def check(v: Any) -> float:
        seconds = math.nan
        if isinstance(v, int | float) and not isinstance(v, bool):
            seconds = float(v) if -1e300 < v < 1e300 else math.inf  # float(10**400) would raise
        elif isinstance(v, str) and _DURATION.fullmatch(text := v.strip().lower().replace(" ", "")):
            parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text)
            seconds = sum(float(n) * _SECONDS[unit] for n, unit in parts)
        if not (0 < seconds < math.inf or (seconds == 0 and not positive)):
            _fail(what, v)
        return seconds

    return check


def parse_size(text: str | int) -> int:
    """Bytes in ``text``: ``1024``, ``"500MiB"``, ``"1GiB"``, ``"2GB"`` (KB/MB/GB: 1000-based)."""
    try:
        return _size(text)
    except ConfigError as err:
        raise ConfigError(f"size {err}") from None


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``: ``30``, ``"30s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1h30m"``."""
    try:
        return _duration(positive=False)(text)
    except ConfigError as err:
        raise ConfigError(f"duration {err}") from None


_ALIAS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,252}")
_TARGET = re.compile(
    r"(?:([^@\s:/-][^@\s:/]*)@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)(?::(\d{1,5}))?"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def split_ssh_target(text: str) -> tuple[str | None, str, int | None]:
    """``"alice@gpu-b.lab.org:2200"`` -> ``("alice", "gpu-b.lab.org", 2200)``; IPv6 in brackets."""
    m = _TARGET.fullmatch(text.strip())
    if m is None or not 0 < int(m[3] or 22) < 65536:
        raise ConfigError(
            f"ssh target {_show(text)} is not [USER@]HOST[:PORT], e.g. alice@gpu-b:2200"
        )
    return m[1], m[2].strip("[]"), int(m[3]) if m[3] else None


def _ssh(v: Any) -> str | bool:
    if isinstance(v, bool):
        return v
    with contextlib.suppress(ConfigError):
        if isinstance(v, str) and split_ssh_target(v):
            return v.strip()
    _fail('false (run locally) or "[USER@]HOST[:PORT]", e.g. "alice@gpu-b:2200"', v)


def _gpus(v: Any) -> Literal["auto"] | tuple[int, ...]:
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


def _env(v: Any) -> dict[str, str]:
    if not isinstance(v, Mapping):
        raise ConfigError(f'must be a table like {{ WANDB_MODE = "offline" }}, got {_kind(v)}')
    for k, val in v.items():
        if not isinstance(k, str) or not _ENV_NAME.fullmatch(k):
            raise ConfigError(f"has {_show(k)}, which is not a variable name (letters, digits, _)")
        if not isinstance(val, str) or "\0" in val:
            # Silent str() would turn true into "True"; the user should say what the shell sees.
            raise ConfigError(
                f'value of {k} must be a string (quote it: {k} = "..."), got {_kind(val)}'
            )
    return dict(v)


def _names(v: Any) -> frozenset[str]:
    if not isinstance(v, list) or not all(isinstance(k, str) and _ENV_NAME.fullmatch(k) for k in v):
        _fail('a list of variable names like ["WANDB_API_KEY"]', v)
    return frozenset(v)


def _globs(v: Any) -> tuple[str, ...]:
    def ok(g: Any) -> bool:
        return (
            isinstance(g, str)
            and bool(g.strip())
            and "\0" not in g
            and not g.startswith(("/", "~"))
            and ".." not in g.replace("\\", "/").split("/")
        )

    if not isinstance(v, list) or not all(ok(g) for g in v):
        _fail('a list of glob patterns inside workdir, like ["out/*.json"]', v)
    return tuple(v)


#: Every host key: its check, and the default used when neither the host nor [defaults] sets it.
_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "ssh": (_ssh, True),
    "gpus": (_gpus, "auto"),
    "slots": (_int(0), None),  # None: follows the GPUs (HostSpec.slots_for)
    "max_gpu_memory_used": (_size, GIB),
    "workdir": (_text(), None),
    "setup": (_text(empty_ok=True), None),  # "" cancels a default: becomes None
    "python": (_text(), "python3"),
    "env": (_env, {}),
    "secret_env": (_names, frozenset()),
    "state_dir": (_text(), "~/.labtasker"),
    "connect_timeout": (_duration(positive=True), 10.0),
    "keepalive_interval": (_duration(positive=True), 2.0),
    "keepalive_count_max": (_int(1), 3),
    "lost_after": (_duration(positive=False), 600.0),
    "kill_grace": (_duration(positive=False), 10.0),
    "suspend_after_failures": (_int(0), 5),
    "failure_window": (_duration(positive=True), 600.0),
    "outputs": (_globs, ()),
    "outputs_max_size": (_size, GIB),
    "enabled": (_bool, True),
}
HOST_KEYS: tuple[str, ...] = tuple(_KEYS)
DEFAULTS_KEYS: tuple[str, ...] = tuple(k for k in _KEYS if k != "ssh")  # ssh is one host's address
CONTROLLER_KEYS: tuple[str, ...] = ("on_finish",)
_TOP_KEYS = ("defaults", "hosts", "controller")


class _Where:
    """Makes ``file:line: host NAME:`` message prefixes; lines are found only when text is known."""

    def __init__(self, path: Path, text: str | None) -> None:
        self.path, self.lines = path, (text.splitlines() if text is not None else [])

    def line(self, table: tuple[str, ...], key: str | None) -> int | None:
        current: tuple[str, ...] = ()
        found: int | None = None
        for no, raw in enumerate(self.lines, 1):
            header = re.fullmatch(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?", raw)
            if header:
                current = tuple(p.strip().strip("\"'") for p in header[1].split("."))
                if key is not None and current[: len(table) + 1] == (*table, key):
                    return no  # the key is a table of its own: [hosts.gpu-a] for ("hosts",)
                found = no if current == table and found is None else found
            elif current == table and key is not None:
                if re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*[=.]", raw):
                    return no
            elif (
                table
                and table[:-1] == current
                and re.match(rf"\s*[\"']?{re.escape(table[-1])}[\"']?\s*=", raw)
            ):
                found = no if found is None else found  # host given inline: [hosts] gpu-a = {...}
        return found

    def error(self, table: tuple[str, ...], key: str | None, message: str) -> ConfigError:
        no = self.line(table, key)
        name = table[-1] if table else ""
        name = name if _ALIAS.fullmatch(name) else _show(name)  # keep odd names on one line
        scope = f"host {name}: " if table[:1] == ("hosts",) and table[1:] else ""
        scope = scope or (f"[{table[0]}]: " if table else "")
        loc = f"{self.path}:{no}" if no else f"{self.path}"
        return ConfigError(f"{loc}: {scope}{message}")


def _check_keys(
    table: Mapping[Any, Any], allowed: tuple[str, ...], where: _Where, at: tuple[str, ...]
) -> None:
    for key in table:
        if not isinstance(key, str):
            raise where.error(at, None, f"key {_show(key)} is not a string")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"valid keys: {', '.join(allowed)}"
            extra = " (`ssh` belongs in a [hosts.NAME] table)" if key == "ssh" else ""
            shown = f"`{key}`" if key.isprintable() else _show(key)
            raise where.error(at, key, f"unknown key {shown}{extra}; {hint}")


def _checked(table: Mapping[str, Any], where: _Where, at: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        try:
            out[key] = _KEYS[key][0](value)
        except ConfigError as err:
            raise where.error(at, key, f"`{key}` {err}") from None
    return out


def _table(value: Any, where: _Where, at: tuple[str, ...]) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise where.error(at, None, f"must be a table, got {_show(value)}")
    return value


def _host(name: Any, raw: Any, defaults: Mapping[str, Any], where: _Where) -> HostSpec:
    at = ("hosts", str(name))
    if not isinstance(name, str) or not _ALIAS.fullmatch(name):
        raise where.error(
            at,
            None,
            f"name {_show(name)} is not a usable ssh alias: use letters, digits and . _ + -"
            ' (not first), no spaces; to reach user@host:port set `ssh = "user@host:port"`',
        )
    table = _table(raw, where, at)
    _check_keys(table, HOST_KEYS, where, at)
    own = _checked(table, where, at)
    merged = {k: default for k, (_, default) in _KEYS.items()} | dict(defaults) | own
    merged["env"] = MappingProxyType({**defaults.get("env", {}), **own.get("env", {})})
    # Union, not override: forgetting a name in one host must not reveal a secret.
    merged["secret_env"] = defaults.get("secret_env", frozenset()) | own.get(
        "secret_env", frozenset()
    )
    ssh = merged.pop("ssh")
    if name == "local" and isinstance(ssh, str):
        raise where.error(
            at, "ssh", "host `local` always runs on this machine; rename it to use `ssh`"
        )
    merged["setup"] = merged["setup"] if merged["setup"] and merged["setup"].strip() else None
    slots_given = merged["slots"] is not None
    if not slots_given:
        merged["slots"] = 1 if merged["gpus"] == () else 0
    return HostSpec(
        name=name,
        ssh=ssh if isinstance(ssh, str) else None,
        local=name == "local" or ssh is False,
        slots_given=slots_given,
        gpus_given="gpus" in own or "gpus" in defaults,
        **merged,
    )


def hosts_from_mapping(data: Mapping[Any, Any], path: Path, text: str | None = None) -> HostsConfig:
    """Check an already-parsed hosts file (``text`` only improves messages with line numbers)."""
    where = _Where(path, text)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must be a TOML table of tables, got {_show(data)}")
    _check_keys(data, _TOP_KEYS, where, ())
    defaults_raw = _table(data.get("defaults", {}), where, ("defaults",))
    _check_keys(defaults_raw, DEFAULTS_KEYS, where, ("defaults",))
    defaults = _checked(defaults_raw, where, ("defaults",))
    controller = _table(data.get("controller", {}), where, ("controller",))
    _check_keys(controller, CONTROLLER_KEYS, where, ("controller",))
    on_finish = controller.get("on_finish")
    if on_finish is not None:
        try:
            on_finish = _text()(on_finish)
        except ConfigError as err:
            raise where.error(("controller",), "on_finish", f"`on_finish` {err}") from None
    hosts_raw = _table(data.get("hosts", {}), where, ("hosts",))
    if not hosts_raw:
        raise ConfigError(
            f"{path}: no hosts defined; add a [hosts.NAME] table per machine (see docs/hosts.md)"
        )
    hosts = tuple(_host(n, raw, defaults, where) for n, raw in hosts_raw.items())
    return HostsConfig(path=path, hosts=hosts, on_finish=on_finish)


def make_host(name: str, settings: Mapping[str, Any] | None = None, **defaults: Any) -> HostSpec:
    """One host from settings as they would appear in hosts.toml, checked the same way."""
    data = {"defaults": defaults, "hosts": {name: dict(settings or {})}}
    return hosts_from_mapping(data, Path("<settings>")).hosts[0]


def parse_hosts_text(text: str, path: Path) -> HostsConfig:
    """Parse and check hosts.toml text; ``path`` is only used in messages and the result."""
    try:
        data = tomllib.loads(text)
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
    return hosts_from_mapping(data, path, text)


def load_hosts(path: Path) -> HostsConfig:
    """Read and check the hosts file at ``path``; every problem is a ``ConfigError``."""
    shown = f"./{path}" if not path.is_absolute() and path.parent == Path() else str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"hosts file {shown} not found; create one (see docs/hosts.md) or pass --hosts PATH"
        ) from None
    except OSError as err:
        raise ConfigError(f"hosts file {shown} cannot be read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    return parse_hosts_text(text, path)
