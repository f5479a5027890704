"""hosts.toml: reading and checking it into frozen ``HostSpec`` records. Reads one file; no network.

Owns every host setting's default and every message about a bad hosts file. What a host *has*
right now (free GPUs, a live connection) is the engine's business, not this module's.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from dispatcher.config.paths import local_state_dir, project_dir
from dispatcher.config.slurm import SLURM_KEYS, SlurmSettings, kind, slurm_settings
from dispatcher.config.sync import NO_SYNC, SyncSpec, sync_from_table
from dispatcher.config.values import (
    ALIAS,
    boolean,
    duration,
    env_names,
    env_table,
    globs,
    gpu_indices,
    gpu_list,
    integer,
    parse_toml,
    show,
    size,
    ssh_target,
    string,
)
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
    workdir: str | None  # None = the remote home (a local host: the queue's project, for_queue)
    setup: str | None
    python: str
    env: Mapping[str, str]  # with the values of ``secret_env`` names (see _secrets)
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
    state_dir_given: bool = True  # unset on a local host: beside the queue (see for_queue)
    outputs_max_size: int = GIB  # bytes of outputs copied back per task, at most
    max_log_size: int = 64 * 1024**2  # bytes of a task's log kept on the controller (head + tail)
    max_tasks_per_gpu: int | None = None  # tasks sharing one GPU by memory, at most
    max_gpus: int | None = None  # GPUs our tasks use at once, at most (the rest: colleagues')
    gpu_order: tuple[int, ...] = ()  # the order GPUs are taken in; unlisted ones after
    sync: bool = False  # ship each task's project snapshot and run it there (docs/hosts.md)
    kind: str = "ssh"  # "slurm": a cluster's login node; tasks go to SLURM (config/slurm.py)
    slurm: SlurmSettings | None = None  # set exactly when kind is "slurm"

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
    sync: SyncSpec = NO_SYNC  # the [sync] table: what the project snapshot holds

    @property
    def secret_names(self) -> frozenset[str]:
        """Every host's ``secret_env`` names: kept out of what the controller starts itself."""
        return frozenset().union(*(h.secret_env for h in self.hosts))


#: Every host key: its check, and the default used when neither the host nor [defaults] sets it.
_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "ssh": (ssh_target, True),
    "gpus": (gpu_list, "auto"),
    "slots": (integer(0), None),  # None: follows the GPUs (HostSpec.slots_for)
    "max_gpu_memory_used": (size, GIB),
    "workdir": (string(), None),
    "setup": (string(empty_ok=True), None),  # "" cancels a default: becomes None
    "python": (string(), "python3"),
    "env": (env_table, {}),
    "secret_env": (env_names, frozenset()),
    "state_dir": (string(), "~/.labtasker"),
    "connect_timeout": (duration(positive=True), 10.0),
    "keepalive_interval": (duration(positive=True), 2.0),
    "keepalive_count_max": (integer(1), 3),
    "lost_after": (duration(positive=False), 600.0),
    "kill_grace": (duration(positive=False), 10.0),
    "suspend_after_failures": (integer(0), 5),
    "failure_window": (duration(positive=True), 600.0),
    "outputs": (globs, ()),
    "outputs_max_size": (size, GIB),
    "max_log_size": (size, 64 * 1024**2),
    "enabled": (boolean, True),
    "max_tasks_per_gpu": (integer(1), None),
    "max_gpus": (integer(0), None),
    "gpu_order": (gpu_indices, ()),
    "sync": (boolean, None),  # None: on when `workdir` is unset (see _host)
    "kind": (kind, "ssh"),
    **SLURM_KEYS,
}
HOST_KEYS: tuple[str, ...] = tuple(_KEYS)
DEFAULTS_KEYS: tuple[str, ...] = tuple(k for k in _KEYS if k != "ssh")  # ssh is one host's address
CONTROLLER_KEYS: tuple[str, ...] = ("on_finish",)
_TOP_KEYS = ("defaults", "hosts", "controller", "sync")


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
        name = name if ALIAS.fullmatch(name) else show(name)  # keep odd names on one line
        scope = f"host {name}: " if table[:1] == ("hosts",) and table[1:] else ""
        scope = scope or (f"[{table[0]}]: " if table else "")
        loc = f"{self.path}:{no}" if no else f"{self.path}"
        return ConfigError(f"{loc}: {scope}{message}")


def _check_keys(
    table: Mapping[Any, Any], allowed: tuple[str, ...], where: _Where, at: tuple[str, ...]
) -> None:
    for key in table:
        if not isinstance(key, str):
            raise where.error(at, None, f"key {show(key)} is not a string")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"valid keys: {', '.join(allowed)}"
            extra = " (`ssh` belongs in a [hosts.NAME] table)" if key == "ssh" else ""
            shown = f"`{key}`" if key.isprintable() else show(key)
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
        raise where.error(at, None, f"must be a table, got {show(value)}")
    return value


def _secrets(
    names: frozenset[str],
    env: Mapping[str, str],
    environ: Mapping[str, str],
    where: _Where,
    at: tuple[str, ...],
) -> dict[str, str]:
    """The values of ``secret_env`` names that ``env`` does not set, from ``environ`` (the
    controller's own environment), so a secret need not be written in hosts.toml.

    A name set in neither is an error here, before any task runs without it; the message names
    the variable, never a value.
    """
    found = {k: environ[k] for k in sorted(names - env.keys()) if environ.get(k)}
    missing = sorted(names - env.keys() - found.keys())
    if missing:
        raise where.error(
            at,
            "secret_env",
            f"`secret_env` names {missing[0]}, which is set neither in `env` nor in the "
            f"environment labtasker runs in; export {missing[0]} before running labtasker, "
            "or remove it from `secret_env`",
        )
    return found


def _host(
    name: Any,
    raw: Any,
    defaults: Mapping[str, Any],
    where: _Where,
    environ: Mapping[str, str],
) -> HostSpec:
    at = ("hosts", str(name))
    if not isinstance(name, str) or not ALIAS.fullmatch(name):
        raise where.error(
            at,
            None,
            f"name {show(name)} is not a usable ssh alias: use letters, digits and . _ + -"
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
    named_at = at if "secret_env" in own or "secret_env" not in defaults else ("defaults",)
    found = _secrets(merged["secret_env"], merged["env"], environ, where, named_at)
    merged["env"] = MappingProxyType({**merged["env"], **found})
    ssh = merged.pop("ssh")
    if name == "local" and isinstance(ssh, str):
        raise where.error(
            at, "ssh", "host `local` always runs on this machine; rename it to use `ssh`"
        )
    merged["setup"] = merged["setup"] if merged["setup"] and merged["setup"].strip() else None
    given = set(own) | set(defaults)
    merged["slurm"] = slurm_settings(merged, given, lambda k, m: where.error(at, k, m))
    if merged["sync"] is None:  # code managed by hand where a workdir is set, shipped elsewhere
        merged["sync"] = merged["workdir"] is None
    slots_given = merged["slots"] is not None
    if not slots_given:
        merged["slots"] = 1 if merged["gpus"] == () else 0
    return HostSpec(
        name=name,
        ssh=ssh if isinstance(ssh, str) else None,
        local=name == "local" or ssh is False,
        slots_given=slots_given,
        gpus_given="gpus" in own or "gpus" in defaults,
        state_dir_given="state_dir" in given or merged["kind"] == "slurm",
        **merged,
    )


def for_queue(config: HostsConfig, db_path: Path) -> HostsConfig:
    """``config`` as the queue at ``db_path`` uses it: a local host without ``workdir`` runs
    tasks in the queue's project directory, and one without ``state_dir`` keeps its helper and
    run records beside the queue (``config.paths``), not in the home directory."""

    def settled(spec: HostSpec) -> HostSpec:
        if not spec.local:
            return spec
        workdir = spec.workdir if spec.workdir is not None else str(project_dir(db_path))
        state = spec.state_dir if spec.state_dir_given else str(local_state_dir(db_path))
        return replace(spec, workdir=workdir, state_dir=state, state_dir_given=True)

    return replace(config, hosts=tuple(settled(h) for h in config.hosts))


def hosts_from_mapping(
    data: Mapping[Any, Any],
    path: Path,
    text: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> HostsConfig:
    """Check an already-parsed hosts file (``text`` only improves messages with line numbers).

    ``environ`` (default: this process's environment) gives the ``secret_env`` values that no
    ``env`` table sets.
    """
    environ = os.environ if environ is None else environ
    where = _Where(path, text)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must be a TOML table of tables, got {show(data)}")
    _check_keys(data, _TOP_KEYS, where, ())
    defaults_raw = _table(data.get("defaults", {}), where, ("defaults",))
    _check_keys(defaults_raw, DEFAULTS_KEYS, where, ("defaults",))
    defaults = _checked(defaults_raw, where, ("defaults",))
    controller = _table(data.get("controller", {}), where, ("controller",))
    _check_keys(controller, CONTROLLER_KEYS, where, ("controller",))
    on_finish = controller.get("on_finish")
    if on_finish is not None:
        try:
            on_finish = string()(on_finish)
        except ConfigError as err:
            raise where.error(("controller",), "on_finish", f"`on_finish` {err}") from None
    hosts_raw = _table(data.get("hosts", {}), where, ("hosts",))
    if not hosts_raw:
        raise ConfigError(
            f"{path}: no hosts defined; add a [hosts.NAME] table per machine (see docs/hosts.md)"
        )
    hosts = tuple(_host(n, raw, defaults, where, environ) for n, raw in hosts_raw.items())
    return HostsConfig(path=path, hosts=hosts, on_finish=on_finish, sync=_sync(data, where))


def make_host(name: str, settings: Mapping[str, Any] | None = None, **defaults: Any) -> HostSpec:
    """One host from settings as they would appear in hosts.toml, checked the same way."""
    data = {"defaults": defaults, "hosts": {name: dict(settings or {})}}
    return hosts_from_mapping(data, Path("<settings>")).hosts[0]


def parse_hosts_text(text: str, path: Path) -> HostsConfig:
    """Parse and check hosts.toml text; ``path`` is only used in messages and the result."""
    return hosts_from_mapping(parse_toml(text, path), path, text)


def load_hosts(path: Path, queue: Path | None = None) -> HostsConfig:
    """Read and check the hosts file at ``path``; every problem is a ``ConfigError``. With
    ``queue`` (a queue file's path), local hosts take that queue's defaults (``for_queue``), and
    a bare file name missing here is looked for in the queue's project directory too."""
    bare = not path.is_absolute() and path.parent == Path()
    shown = f"./{path}" if bare else str(path)
    if bare and queue is not None and not path.exists():
        other = project_dir(queue) / path
        if other.exists():
            path, shown = other, str(other)
        elif other.parent != Path.cwd():
            shown += f" (nor {other})"
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
    config = parse_hosts_text(text, path)
    return config if queue is None else for_queue(config, queue)


def _sync(data: Mapping[Any, Any], where: _Where) -> SyncSpec:
    """The [sync] table (the project snapshot's settings; config/sync.py checks the values)."""
    return sync_from_table(data.get("sync", {}), lambda k, m: where.error(("sync",), k, m))


def load_sync(path: Path) -> SyncSpec:
    """The ``[sync]`` table of the hosts file at ``path``, checked; the defaults when the file
    does not exist. Only [sync] is read: adding tasks needs no valid host (nor its secrets)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return NO_SYNC
    except OSError as err:
        raise ConfigError(f"hosts file {path} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    return _sync(parse_toml(text, path), _Where(path, text))
