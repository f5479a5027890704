"""Argument values as sweeps read and store them: one grid value parsed, strict JSON checked.

Shared by ``sweep`` (grids, files) and ``sampling`` (random points), which otherwise know nothing
of each other's parsing. Pure: no I/O.
"""

from __future__ import annotations

import json
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
