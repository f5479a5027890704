"""Argument values as sweeps read and store them: one grid value parsed, strict JSON checked.

Shared by ``sweep`` (grids, files) and ``sampling`` (random points), which otherwise know nothing
of each other's parsing. Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from dispatcher.errors import SweepError

#: A dotted argument key as its parts: ``model.depth`` is ("model", "depth").
Path_ = tuple[str, ...]
#: One axis of a grid: the keys that vary together, and their rows of values.
Axis = tuple[tuple[Path_, ...], tuple[tuple[Any, ...], ...]]


def reject_constant(name: str) -> Any:
    """``json.loads``'s parse_constant: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def parse_scalar(text: str) -> Any:
    """A grid value: a JSON number, true/false/null when it parses as one, else the string."""
    try:
        value = json.loads(text, parse_constant=reject_constant)
    except ValueError:
        return text
    if value is None or isinstance(value, bool | int | float):
        return value
    return text


def check_json(value: Any, where: str) -> None:
    """SweepError unless ``value`` can be stored as (strict) JSON, as task args are."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise SweepError(
            f"{where}: value cannot be stored as JSON ({err}); use strings for dates"
        ) from None


_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd]?)+")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: How a duration may be written, for error messages.
DURATION_FORMS = 'like 30, "30s", "10m", "2h", "1h30m"'


def duration_seconds(value: Any) -> float | None:
    """Seconds in ``value``: a number, or text like ``"30"``, ``"30s"``, ``"10m"``, ``"2h"``,
    ``"1d"``, ``"1h30m"``; None when it is neither (a bool, a negative number, other text).
    The one duration parser: hosts.toml settings, task timeouts (CLI, sweep files, API)."""
    seconds = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value) if -1e300 < value < 1e300 else math.inf  # float(10**400) raises
    elif isinstance(value, str) and _DURATION.fullmatch(
        text := value.strip().lower().replace(" ", "")
    ):
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text)
        seconds = sum(float(n) * _SECONDS[unit] for n, unit in parts)
    return seconds if 0 <= seconds < math.inf else None


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SIZE_UNITS |= {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
#: How a size may be written, for error messages.
SIZE_FORMS = 'like 1073741824, "512MiB", "10GiB", "10G" (k/M/G/T: 1000-based; KiB/MiB/GiB/TiB)'


def size_bytes(value: Any) -> int | None:
    """Bytes in ``value``: a count, or text like ``"512MiB"``, ``"10GiB"``, ``"10G"``, ``"2GB"``;
    None when it is neither (a bool, a negative number, other text). The one size parser:
    hosts.toml settings and GPU memory (CLI, sweep files, API)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    n = float(m[1]) * _SIZE_UNITS[(m[2] or "").lower()] if m else math.inf
    return int(n) if math.isfinite(n) else None


def show_size(n: int) -> str:
    """Bytes as people read GPU memory: "40 GiB", "512 MiB", "1.5 GiB"."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} B"
