"""A metric against an arg drawn in text (``labtasker results --plot``): one marker per task on a
character grid, one marker per group of ``--by``, and the mean and spread (standard deviation)
per x and group. Pure: points in, lines out.

The x axis turns logarithmic when every x is positive and the largest is at least 100 times the
smallest (a learning-rate sweep), as the dashboard's plot does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Markers of the groups, in order; a grid cell holding several groups shows ``&``.
MARKERS = "ox+*#@%=~^"
#: The ratio of largest to smallest x from which the x axis is logarithmic.
LOG_SPAN = 100.0


@dataclass(frozen=True)
class Point:
    """One task: its x, its metric, and its group (``--by``'s value as text, "" without)."""

    x: float
    y: float
    group: str = ""


@dataclass(frozen=True)
class Summary:
    """The tasks of one group at one x: how many, their mean metric and its spread."""

    group: str
    x: float
    n: int
    mean: float
    sd: float


def log_axis(xs: Sequence[float]) -> bool:
    """True when the x axis should be logarithmic (see the module docstring)."""
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= LOG_SPAN


def _scale(values: Sequence[float], size: int, log: bool) -> Callable[[float], int]:
    f: Callable[[float], float] = math.log10 if log else float
    lo, hi = min(map(f, values)), max(map(f, values))
    span = hi - lo or 1.0
    return lambda v: round((f(v) - lo) / span * (size - 1))


def _label(v: float) -> str:
    return f"{v:.3g}"


def draw(
    points: Sequence[Point], *, width: int = 72, height: int = 18, x_label: str = "x"
) -> list[str]:
    """The chart as lines: y labels on the left, the x axis and its label below."""
    if not points:
        return ["(no points)"]
    groups = sorted({p.group for p in points}, key=_natural)
    marker = {g: MARKERS[i % len(MARKERS)] for i, g in enumerate(groups)}
    xs, ys = [p.x for p in points], [p.y for p in points]
    log = log_axis(xs)
    sx, sy = _scale(xs, width, log), _scale(ys, height, False)
    grid = [[" "] * width for _ in range(height)]
    for p in points:
        row, col = height - 1 - sy(p.y), sx(p.x)
        cell = grid[row][col]
        grid[row][col] = marker[p.group] if cell in (" ", marker[p.group]) else "&"
    top, bottom = _label(max(ys)), _label(min(ys))
    pad = max(len(top), len(bottom))
    lines = []
    for i, cells in enumerate(grid):
        tag = top if i == 0 else bottom if i == height - 1 else ""
        lines.append(f"{tag:>{pad}} │{''.join(cells).rstrip()}")
    lines.append(" " * pad + " └" + "─" * width)
    left, right = _label(min(xs)), _label(max(xs))
    axis = f"{left}{x_label + (' (log)' if log else ''):^{max(width - len(left) - len(right), 1)}}"
    lines.append(" " * (pad + 2) + axis + right)
    return lines


def summarise(points: Sequence[Point]) -> list[Summary]:
    """Mean and standard deviation of the metric per group and x, groups then x in order."""
    by: dict[tuple[str, float], list[float]] = {}
    for p in points:
        by.setdefault((p.group, p.x), []).append(p.y)
    out = []
    for (group, x), ys in sorted(by.items(), key=lambda kv: (_natural(kv[0][0]), kv[0][1])):
        mean = sum(ys) / len(ys)
        sd = math.sqrt(sum((y - mean) ** 2 for y in ys) / len(ys))
        out.append(Summary(group, x, len(ys), mean, sd))
    return out


def legend(points: Sequence[Point], by: str) -> str:
    """``o seed=1   x seed=2`` (empty without groups)."""
    groups = sorted({p.group for p in points}, key=_natural)
    if groups == [""]:
        return ""
    return "   ".join(f"{MARKERS[i % len(MARKERS)]} {by}={g}" for i, g in enumerate(groups))


def _natural(text: str) -> tuple[int, float, str]:
    """Numbers in numeric order first, then other text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
