"""TOML sweep files (docs/queue.md): their keys, points and the task defaults they set.

Pure: callers pass the file's text in. Errors are SweepError naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.core.sampling import from_table as random_axis
from dispatcher.core.sweep import Grid, check_disjoint, flatten_paths
from dispatcher.core.values import (
    DURATION_FORMS,
    SIZE_FORMS,
    Axis,
    check_json,
    duration_seconds,
    size_bytes,
)
from dispatcher.errors import SweepError

#: Largest `repeat`: its values are built eagerly (a million is already far past any sweep).
MAX_REPEAT = 1_000_000
#: Top-level keys a TOML sweep file may hold.
SWEEP_KEYS = (
    "command",
    "name",
    "args",
    "grid",
    "zip",
    "random",
    "repeat",
    "priority",
    "max_attempts",
    "timeout",
    "gpus",
    "max_running",
    "outputs",
    "after",
    "after_any",
    "after_failed",
    "gpu_memory",
    "gpu_type",
    "min_gpu_memory",
)


@dataclass(frozen=True)
class SweepFile:
    """A parsed TOML sweep file: its points and the task defaults it sets."""

    grid: Grid
    command: str | None = None
    name: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    gpus: int | None = None
    max_running: int | None = None
    outputs: tuple[str, ...] | None = None
    after: tuple[int, ...] = ()
    after_any: tuple[int, ...] = ()
    after_failed: tuple[int, ...] = ()
    gpu_memory: int | str | None = None  # checked with the CLI's values (batch.size_setting)
    gpu_type: str | None = None
    min_gpu_memory: int | str | None = None


def parse_sweep_toml(text: str, *, source: str) -> SweepFile:
    """Parse a TOML sweep file (see docs/queue.md); errors name ``source`` and the key."""
    import tomllib  # only `queue add --file x.toml` needs it

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{source}: not valid TOML ({err})") from None
    except RecursionError:
        raise SweepError(f"{source}: nested too deeply to read") from None
    for key in doc:
        if key not in SWEEP_KEYS:
            raise SweepError(
                f"{source}: unknown key {key!r}; allowed top-level keys: {', '.join(SWEEP_KEYS)}"
            )
    fixed = _table(doc, "args", source)
    check_json(fixed, f"{source}: [args]")
    axes = _file_axes(doc, source)
    randoms = random_axis(_table(doc, "random", source), f"{source}: random")
    if randoms is not None:
        axes.append(randoms)
    repeat = _opt(doc, "repeat", int, source)
    if repeat is not None:
        if not 1 <= repeat <= MAX_REPEAT:
            raise SweepError(f"{source}: repeat must be 1 to {MAX_REPEAT:,}, got {repeat}")
        axes.append(((("repeat",),), tuple((i,) for i in range(repeat))))
    all_paths = [p for paths, _ in axes for p in paths]
    all_paths += [p for p, _ in flatten_paths(fixed, (), leaves_only=True)]
    check_disjoint(all_paths, source=source)
    command = _opt(doc, "command", str, source)
    name = _opt(doc, "name", str, source)
    timeout = doc.get("timeout")
    if timeout is not None and not duration_seconds(timeout):
        raise SweepError(
            f"{source}: 'timeout' must be a positive duration {DURATION_FORMS}, got {timeout!r}"
        )
    outputs = _opt(doc, "outputs", list, source)
    if outputs is not None and not all(isinstance(g, str) for g in outputs):
        raise SweepError(f"{source}: 'outputs' must be a list of glob strings like"
                         f' ["out/*.json"], got {outputs!r}')  # fmt: skip
    return SweepFile(
        grid=Grid(fixed, tuple(axes)),
        command=command,
        name=name,
        priority=_opt(doc, "priority", int, source),
        max_attempts=_opt(doc, "max_attempts", int, source),
        timeout=duration_seconds(timeout),
        gpus=_opt(doc, "gpus", int, source),
        max_running=_opt(doc, "max_running", int, source),
        outputs=None if outputs is None else tuple(outputs),
        after=_task_ids(doc, "after", source),
        after_any=_task_ids(doc, "after_any", source),
        after_failed=_task_ids(doc, "after_failed", source),
        gpu_memory=_size(doc, "gpu_memory", source),
        gpu_type=_opt(doc, "gpu_type", str, source),
        min_gpu_memory=_size(doc, "min_gpu_memory", source),
    )


def _task_ids(doc: dict[str, Any], key: str, source: str) -> tuple[int, ...]:
    """A dependency key of a sweep file: one task id or a list of them."""
    value = doc.get(key, [])
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids):
        raise SweepError(f"{source}: {key!r} must be a task id or a list of them, got {value!r}")
    return tuple(ids)


def _listed(values: Any, where: str) -> list[Any]:
    """A sweep file's list of values for one key; SweepError unless it is one, non-empty."""
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}: expected a non-empty list of values")
    check_json(values, where)
    return values


def _file_axes(doc: Mapping[str, Any], source: str) -> list[Axis]:
    """The axes of a sweep file's [grid] (one per key) and [zip] (one for all its keys)."""
    axes: list[Axis] = []
    for path, values in flatten_paths(_table(doc, "grid", source), ()):
        listed = _listed(values, f"{source}: grid.{'.'.join(path)}")
        axes.append(((path,), tuple((v,) for v in listed)))
    zipped = [
        (path, _listed(values, f"{source}: zip.{'.'.join(path)}"))
        for path, values in flatten_paths(_table(doc, "zip", source), ())
    ]
    if zipped:
        if len({len(v) for _, v in zipped}) > 1:
            sizes = ", ".join(f"{'.'.join(p)}={len(v)}" for p, v in zipped)
            raise SweepError(f"{source}: [zip] lists must have equal lengths ({sizes})")
        paths = tuple(p for p, _ in zipped)
        axes.append((paths, tuple(zip(*(v for _, v in zipped), strict=True))))
    return axes


def _table(doc: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise SweepError(f"{source}: {key!r} must be a table ([{key}])")
    return value


def _size(doc: Mapping[str, Any], key: str, source: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    n = size_bytes(value)
    if not n:
        raise SweepError(f"{source}: {key!r} must be a positive size {SIZE_FORMS}, got {value!r}")
    return n


def _opt(doc: Mapping[str, Any], key: str, kind: type, source: str) -> Any:
    value = doc.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SweepError(f"{source}: {key!r} must be {kind.__name__}, got {value!r}")
    return value
