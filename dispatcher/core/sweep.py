"""Argument groups: ``--args`` JSON, ``--grid KEY=V1,V2`` and JSONL files; grids and their merging.

Pure: callers pass file text in. Grids expand lazily (``Grid`` is an iterable with a length), so
a million-point sweep is never held as a list of dicts; random points (``dispatcher.core.sampling``)
are one more axis. Errors are SweepError naming the input. TOML sweep files: ``core.sweep_file``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.core.values import (
    Axis,
    Path_,
    parse_scalar,
    reject_constant,
)
from dispatcher.errors import SweepError


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
    check_disjoint([p for paths, _ in axes for p in paths], source="--grid")
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
    check_disjoint([p for paths, _ in axes for p in paths], source="grid=")
    return Grid({}, tuple(axes))


def with_axis(grid: Grid, axis: Axis | None) -> Grid:
    """``grid`` crossed with one more axis (varying fastest); SweepError if keys overlap."""
    if axis is None:
        return grid
    out = Grid(grid.fixed, (*grid.axes, axis))
    paths = [p for paths, _ in out.axes for p in paths]
    check_disjoint([*paths, *(p for p, _ in flatten_paths(grid.fixed, (), leaves_only=True))],
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
    leaves = [p for p, _ in flatten_paths(fixed, (), leaves_only=True)]
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


def flatten_paths(
    table: Mapping[str, Any], prefix: Path_, *, leaves_only: bool = False
) -> Iterator[tuple[Path_, Any]]:
    """Each (path, value) of a nested table; with ``leaves_only``, empty tables are leaves."""
    # TOML turns ``model.depth = [...]`` into nested tables; a grid key is the path to a leaf.
    for key, value in table.items():
        path = (*prefix, key)
        if isinstance(value, dict) and (value or not leaves_only):
            yield from flatten_paths(value, path, leaves_only=leaves_only)
        else:
            yield path, value


def check_disjoint(paths: Iterable[Path_], *, source: str) -> None:
    """SweepError when a key is set twice (one path a prefix of another)."""
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
