"""Argument groups: ``--args`` JSON, ``--grid KEY=V1,V2``, JSONL files and TOML sweep files.

Pure: callers pass file text in. Grids expand lazily (``Grid`` is an iterable with a length), so
a million-point sweep is never held as a list of dicts; random points (``dispatcher.core.sampling``)
are one more axis. Errors are SweepError naming the input.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.core.sampling import from_table as random_axis
from dispatcher.core.values import (
    DURATION_FORMS,
    SIZE_FORMS,
    Axis,
    Path_,
    check_json,
    duration_seconds,
    parse_scalar,
    reject_constant,
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


def parse_args_json(text: str, *, source: str = "--args") -> dict[str, Any]:
    """Parse one strict JSON object (no NaN/Infinity); SweepError names ``source`` and the text."""
    try:
        value = json.loads(text, parse_constant=reject_constant)
    except ValueError as err:
        raise SweepError(f"{source} {_clip(text)}: not valid JSON ({err})") from None
    except RecursionError:
        raise SweepError(f"{source} {_clip(text)}: nested too deeply") from None
    if not isinstance(value, dict):
        raise SweepError(
            f"{source} {_clip(text)}: expected a JSON object like '{{\"lr\": 0.1}}',"
            f" got {type(value).__name__}"
        )
    return value


def parse_jsonl(text: str, *, source: str) -> list[dict[str, Any]]:
    """One JSON object per line, blank lines ignored; errors name ``source:line``."""
    out: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            out.append(parse_args_json(line, source=f"{source}:{lineno}:"))
    return out


@dataclass(frozen=True)
class Grid:
    """A lazy sweep: ``fixed`` args crossed with ``axes``; iterating yields one args dict a point.

    Each axis is ``(paths, rows)``: the keys that vary together (one key for a grid entry, several
    for a zip group) and their value tuples. Axes vary in order, the last one fastest.
    """

    fixed: dict[str, Any] = field(default_factory=dict)
    axes: tuple[Axis, ...] = ()

    def __len__(self) -> int:
        return math.prod(len(rows) for _, rows in self.axes)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        nested = any(len(p) > 1 for paths, _ in self.axes for p in paths)
        axis_dicts = [[_point(paths, row) for row in rows] for paths, rows in self.axes]
        fixed = self.fixed
        if not nested:
            # Hot path for large flat grids: plain dict merges, no per-point recursion.
            for combo in itertools.product(*axis_dicts):
                point = fixed.copy()
                for part in combo:
                    point.update(part)
                yield point
            return
        for combo in itertools.product(*axis_dicts):
            point = fixed
            for part in combo:
                point = merge(point, part)
            yield point if point is not fixed else dict(fixed)


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``extra`` merged in (nested objects merge); ``base`` unchanged."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


def _point(paths: Sequence[Path_], row: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in zip(paths, row, strict=True):
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def _key_path(key: str, source: str) -> Path_:
    path = tuple(key.strip().split("."))
    if not all(path):
        raise SweepError(f"{source}: bad key {key!r}; use a name or dotted names like model.depth")
    return path


def parse_grid(items: Sequence[str]) -> list[dict[str, Any]]:
    """Expand ``--grid KEY=V1,V2`` items (crossed, last varies fastest) into a list of args."""
    return list(grid_from_items(items))


def grid_from_items(items: Sequence[str]) -> Grid:
    """The lazy form of ``parse_grid``: one axis per item, in the order given."""
    axes: list[Axis] = []
    seen: set[Path_] = set()
    for item in items:
        key, sep, values = item.partition("=")
        source = f"--grid {item!r}"
        if not sep:
            raise SweepError(f"{source}: expected KEY=V1,V2,... (missing '=')")
        path = _key_path(key, source)
        if path in seen:
            raise SweepError(f"{source}: key {key.strip()!r} given twice")
        seen.add(path)
        if not values:
            raise SweepError(f"{source}: no values after '='")
        split = values.split(",")
        if any(not v.strip() for v in split):
            raise SweepError(
                f"{source}: empty value in the list (a doubled, leading or trailing comma);"
                " a grid value cannot be empty"
            )
        axes.append(((path,), tuple((parse_scalar(v),) for v in split)))
    _check_disjoint([p for paths, _ in axes for p in paths], source="--grid")
    return Grid({}, tuple(axes))


def grid_from_mapping(grid: Mapping[str, Any]) -> Grid:
    """A lazy ``Grid`` from ``{"lr": [0.1, 0.01], "model.depth": [2, 4]}`` (dotted keys nest)."""
    axes: list[Axis] = []
    for key, values in grid.items():
        path = tuple(str(key).split("."))
        if not all(path):
            raise SweepError(f"grid key {key!r}: use a name or dotted names like model.depth")
        if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
            raise SweepError(
                f"grid key {key!r}: give a list of values, e.g. {{{key!r}: [1, 2]}}, not {values!r}"
            )
        rows = tuple((v,) for v in values)
        if not rows:
            raise SweepError(f"grid key {key!r}: the list of values is empty")
        axes.append(((path,), rows))
    _check_disjoint([p for paths, _ in axes for p in paths], source="grid=")
    return Grid({}, tuple(axes))


def with_axis(grid: Grid, axis: Axis | None) -> Grid:
    """``grid`` crossed with one more axis (varying fastest); SweepError if keys overlap."""
    if axis is None:
        return grid
    out = Grid(grid.fixed, (*grid.axes, axis))
    paths = [p for paths, _ in out.axes for p in paths]
    _check_disjoint([*paths, *(p for p, _ in _flatten(grid.fixed, (), leaves_only=True))],
                    source="grid and random keys")  # fmt: skip
    return out


def with_fixed(grid: Grid, fixed: Mapping[str, Any]) -> Grid:
    """``grid`` with ``fixed`` args added to every point (``--args`` with ``--grid``, like a sweep
    file's ``[args]``); SweepError naming the key when it is also set by the grid."""
    clash = overlap(fixed, grid.fixed) or _axis_clash(grid, fixed)
    if clash:
        raise SweepError(
            f"--args sets key {clash!r}, which the grid, random or sweep file also sets;"
            " give each key in one place"
        )
    return Grid(merge(grid.fixed, fixed), grid.axes)


def _axis_clash(grid: Grid, fixed: Mapping[str, Any]) -> str | None:
    leaves = [p for p, _ in _flatten(fixed, (), leaves_only=True)]
    for paths, _ in grid.axes:
        for path in paths:
            for leaf in leaves:
                n = min(len(path), len(leaf))
                if path[:n] == leaf[:n]:
                    return ".".join(leaf if len(leaf) <= len(path) else path)
    return None


def overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """The first key (dotted) both ``a`` and ``b`` set, where merging would overwrite a value."""
    for key, value in a.items():
        if key in b:
            other = b[key]
            if isinstance(value, Mapping) and isinstance(other, Mapping) and value and other:
                inner = overlap(value, other)
                if inner is not None:
                    return f"{key}.{inner}"
                continue
            return str(key)
    return None


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
    all_paths += [p for p, _ in _flatten(fixed, (), leaves_only=True)]
    _check_disjoint(all_paths, source=source)
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
    for path, values in _flatten(_table(doc, "grid", source), ()):
        listed = _listed(values, f"{source}: grid.{'.'.join(path)}")
        axes.append(((path,), tuple((v,) for v in listed)))
    zipped = [
        (path, _listed(values, f"{source}: zip.{'.'.join(path)}"))
        for path, values in _flatten(_table(doc, "zip", source), ())
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


def _flatten(
    table: Mapping[str, Any], prefix: Path_, *, leaves_only: bool = False
) -> Iterator[tuple[Path_, Any]]:
    # TOML turns ``model.depth = [...]`` into nested tables; a grid key is the path to a leaf.
    for key, value in table.items():
        path = (*prefix, key)
        if isinstance(value, dict) and (value or not leaves_only):
            yield from _flatten(value, path, leaves_only=leaves_only)
        else:
            yield path, value


def _check_disjoint(paths: Iterable[Path_], *, source: str) -> None:
    seen: set[Path_] = set()
    for path in sorted(paths, key=len):
        for k in range(1, len(path) + 1):
            if path[:k] in seen:
                raise SweepError(
                    f"{source}: key {'.'.join(path)!r} is set twice"
                    f" (also by {'.'.join(path[:k])!r} in args, grid, zip, random or repeat)"
                )
        seen.add(path)


def _clip(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
