"""Fuzzing sweep input: TOML sweep files, JSONL files and ``--args`` JSON.

Whatever the text, parsing (and expanding the first points of a parsed sweep) either succeeds or
raises a ``DispatcherError`` subclass; any other exception would reach the user as a traceback.
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from datetime import UTC
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.core.sampling import KINDS
from dispatcher.core.sweep import parse_args_json, parse_jsonl
from dispatcher.core.sweep_file import SWEEP_KEYS, SweepFile, parse_sweep_toml
from dispatcher.errors import DispatcherError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- a small TOML writer: every value on one line, tables inline ---------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string; lone surrogates (not text) become U+FFFD."""
    out = []
    for ch in text.encode("utf-8", "replace").decode("utf-8"):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    return value.isoformat()  # type: ignore[no-any-return]  # dates, times, datetimes


def toml_document(doc: dict[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


# -- strategies ----------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "lr", "model", "depth", "seed", "samples"]) | st.text(max_size=6)
# Bounded ints, plus a few huge ones: a sweep of 10**30 points must be refused, not expanded.
INTS = st.integers(-1000, 1000) | st.sampled_from([2**63 - 1, -(2**63), 10**30])
SCALARS = st.one_of(
    st.text(max_size=8),
    INTS,
    st.floats(),
    st.booleans(),
    st.datetimes() | st.datetimes(timezones=st.just(UTC)),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
DISTS = st.builds(
    lambda kind, values: {kind: values},
    st.sampled_from([*KINDS, "normal"]),
    st.lists(SCALARS, max_size=3),
)
RANDOM = st.dictionaries(KEYS, DISTS | VALUES, max_size=3).map(
    lambda d: {**d, "samples": d.get("samples", 3)}
) | st.dictionaries(KEYS, VALUES, max_size=3)
GRIDS = st.dictionaries(KEYS, st.lists(VALUES, max_size=3) | VALUES, max_size=3)
# `repeat` gets its own small range: a huge repeat is a known slow path (see the report).
DOCUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "command": st.text(max_size=20) | VALUES,
        "args": st.dictionaries(KEYS, VALUES, max_size=3) | VALUES,
        "grid": GRIDS | VALUES,
        "zip": GRIDS,
        "random": RANDOM | VALUES,
        "repeat": st.integers(-3, 30) | st.text(max_size=3),
        **{
            k: VALUES
            for k in SWEEP_KEYS
            if k not in ("command", "args", "grid", "zip", "random", "repeat")
        },
    },
) | st.dictionaries(KEYS, VALUES, max_size=4)

# Mostly valid sweeps, so that expansion (grid x zip x random x repeat) is exercised too.
JSON_SCALARS = st.text(max_size=6) | st.integers(-5, 5) | st.booleans() | st.floats(-1, 1)
NAMES = st.sampled_from(["a", "b", "c", "model.depth", "model.width", "lr"])
WELL_FORMED = st.fixed_dictionaries(
    {"grid": st.dictionaries(NAMES, st.lists(JSON_SCALARS, min_size=1, max_size=3), max_size=3)},
    optional={
        "args": st.dictionaries(NAMES, JSON_SCALARS, max_size=2),
        "zip": st.integers(1, 3).flatmap(
            lambda n: st.dictionaries(
                st.sampled_from(["z1", "z2"]), st.lists(JSON_SCALARS, min_size=n, max_size=n)
            )
        ),
        "random": st.fixed_dictionaries(
            {"r": DISTS, "samples": st.integers(0, 4)}, optional={"seed": INTS}
        ),
        "repeat": st.integers(0, 3),
    },
)


def parse_or_refuse(text: str) -> SweepFile | None:
    """Parse and expand up to 50 points; None when refused with a DispatcherError."""
    try:
        sweep = parse_sweep_toml(text, source="sweep.toml")
        points = list(itertools.islice(sweep.grid, 50))
        size = len(sweep.grid)
    except DispatcherError as err:
        assert str(err).startswith("sweep.toml") or "sweep.toml" in str(err), err
        return None
    assert all(isinstance(p, dict) for p in points)
    assert len(points) == min(size, 50)
    return sweep


@FUZZ
@given(DOCUMENTS | WELL_FORMED)
def test_structured_sweep_files_parse_or_are_refused_cleanly(doc: dict[str, Any]) -> None:
    text = toml_document(doc)
    tomllib.loads(text)  # the writer above is right: the sweep code, not TOML, is under test
    parse_or_refuse(text)


@FUZZ
@given(st.text(max_size=200) | st.sampled_from(["[grid]\na = [", "repeat = 1e400", "x = 1\nx = 2"]))
def test_arbitrary_text_as_a_sweep_file(text: str) -> None:
    parse_or_refuse(text)


JSON_LINES = st.lists(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=8,
    ).map(json.dumps)
    | st.text(max_size=30),
    max_size=6,
).map("\n".join)


@FUZZ
@given(JSON_LINES | st.binary(max_size=120).map(lambda b: b.decode("utf-8", "replace")))
def test_arbitrary_jsonl_parses_or_is_refused_with_its_line(text: str) -> None:
    try:
        rows = parse_jsonl(text, source="points.jsonl")
    except DispatcherError as err:
        assert str(err).startswith("points.jsonl:"), err
        return
    assert all(isinstance(r, dict) for r in rows)
    assert len(rows) == sum(1 for line in text.splitlines() if line.strip())


@FUZZ
@given(st.text(max_size=80))
def test_arbitrary_args_json(text: str) -> None:
    try:
        assert isinstance(parse_args_json(text), dict)
    except DispatcherError as err:
        assert str(err).startswith("--args "), err


DEEP = 50_000


@pytest.mark.parametrize(
    "parse",
    [
        lambda: parse_args_json('{"a": ' + "[" * DEEP + "]" * DEEP + "}"),
        lambda: parse_jsonl("[" * DEEP, source="points.jsonl"),
        lambda: parse_sweep_toml("args = " + "[" * DEEP, source="sweep.toml"),
    ],
    ids=["args", "jsonl", "toml"],
)
def test_deeply_nested_input_is_refused_cleanly(parse: Any) -> None:
    with pytest.raises(DispatcherError):
        parse()
