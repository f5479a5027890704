"""Argument groups: --args JSON, --grid items, JSONL and TOML sweep files."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core.sweep import (
    Grid,
    grid_from_items,
    merge,
    parse_args_json,
    parse_grid,
    parse_jsonl,
)
from dispatcher.core.sweep_file import parse_sweep_toml
from dispatcher.core.values import parse_scalar
from dispatcher.errors import SweepError

EXAMPLE = """
command = "python train.py --lr %{lr} --seed %{seed} --epochs %{epochs}"
name = "lr-sweep"
priority = 5
timeout = 60
gpus = 1
max_attempts = 2
repeat = 2
[args]
epochs = 10
[grid]
lr = [0.1, 0.01]
seed = [1, 2, 3]
[zip]
model = ["s", "m"]
width = [128, 256]
"""


def test_args_json_must_be_one_strict_object() -> None:
    assert parse_args_json('{"lr": 0.1, "m": {"d": [1]}}') == {"lr": 0.1, "m": {"d": [1]}}
    with pytest.raises(SweepError, match=r"--args '\{lr: 1\}': not valid JSON"):
        parse_args_json("{lr: 1}")
    with pytest.raises(SweepError, match=r"expected a JSON object.*got list"):
        parse_args_json("[1]")
    with pytest.raises(SweepError, match="NaN"):
        parse_args_json('{"a": NaN}')


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("-2.5", -2.5),
        ("1e3", 1000.0),
        ("true", True),
        ("null", None),
        ("abc", "abc"),
        ("NaN", "NaN"),
        ('"q"', '"q"'),
        ("", ""),
        ("01", "01"),
    ],
)
def test_grid_values_are_typed_only_when_json_scalars(text: str, value: Any) -> None:
    assert parse_scalar(text) == value
    assert type(parse_scalar(text)) is type(value)


def test_grid_is_a_cartesian_product_last_key_fastest() -> None:
    assert parse_grid(["lr=0.1,0.01", "seed=1,2"]) == [
        {"lr": 0.1, "seed": 1},
        {"lr": 0.1, "seed": 2},
        {"lr": 0.01, "seed": 1},
        {"lr": 0.01, "seed": 2},
    ]
    assert parse_grid([]) == [{}]


def test_dotted_grid_keys_build_nested_args() -> None:
    assert parse_grid(["model.depth=2,4", "model.act=relu"]) == [
        {"model": {"depth": 2, "act": "relu"}},
        {"model": {"depth": 4, "act": "relu"}},
    ]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["lr"], "missing '='"),
        (["lr="], "no values"),
        (["=1,2"], "bad key"),
        (["a..b=1"], "bad key"),
        (["lr=1", "lr=2"], "given twice"),
        (["m=1", "m.d=2"], "set twice"),
    ],
)
def test_bad_grid_items_name_the_item(items: list[str], message: str) -> None:
    with pytest.raises(SweepError, match=message) as err:
        parse_grid(items)
    assert "--grid" in str(err.value)


def test_jsonl_ignores_blank_lines_and_names_file_and_line() -> None:
    assert parse_jsonl('{"a": 1}\n\n  \n{"a": 2}\n', source="x.jsonl") == [{"a": 1}, {"a": 2}]
    with pytest.raises(SweepError, match=r"runs\.jsonl:3:"):
        parse_jsonl('{"a": 1}\n\n{"a": \n', source="runs.jsonl")


def test_sweep_file_expands_grid_then_zip_then_repeat() -> None:
    sweep = parse_sweep_toml(EXAMPLE, source="s.toml")
    assert (sweep.command or "").startswith("python train.py")
    assert (sweep.name, sweep.priority, sweep.timeout, sweep.gpus, sweep.max_attempts) == (
        "lr-sweep",
        5,
        60.0,
        1,
        2,
    )
    points = list(sweep.grid)
    assert len(points) == len(sweep.grid) == 2 * 3 * 2 * 2
    assert points[0] == {
        "epochs": 10,
        "lr": 0.1,
        "seed": 1,
        "model": "s",
        "width": 128,
        "repeat": 0,
    }
    assert points[1] == {
        "epochs": 10,
        "lr": 0.1,
        "seed": 1,
        "model": "s",
        "width": 128,
        "repeat": 1,
    }
    assert points[2]["model"] == "m" and points[2]["width"] == 256
    assert points[-1] == {
        "epochs": 10,
        "lr": 0.01,
        "seed": 3,
        "model": "m",
        "width": 256,
        "repeat": 1,
    }
    assert len({repr(p) for p in points}) == len(points)


def test_sweep_file_dotted_grid_keys_nest_and_merge_with_args() -> None:
    text = "[args.model]\nwidth = 8\n[grid]\nmodel.depth = [1, 2]\n"
    assert list(parse_sweep_toml(text, source="s.toml").grid) == [
        {"model": {"width": 8, "depth": 1}},
        {"model": {"width": 8, "depth": 2}},
    ]
    with pytest.raises(SweepError, match=r"'model\.width' is set twice"):
        parse_sweep_toml("[args]\nmodel = 1\n[grid]\nmodel.width = [1]", source="s.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("comand = 'x'", r"s\.toml: unknown key 'comand'"),
        ("[grid]\nlr = 0.1", "grid.lr: expected a non-empty list"),
        ("[grid]\nlr = []", "grid.lr: expected a non-empty list"),
        ("[zip]\na = [1, 2]\nb = [1]", "equal lengths"),
        ("[args]\nlr = 1\n[grid]\nlr = [1, 2]", "'lr' is set twice"),
        ("repeat = 0", "repeat must be 1 to 1,000,000"),
        ("repeat = 1\n[args]\nrepeat = 3", "'repeat' is set twice"),
        ("priority = 'high'", "'priority' must be int"),
        ("priority = true", "'priority' must be int"),
        ("[args]\nwhen = 2024-01-01", r"\[args\].*JSON"),
        ("grid = 3", "must be a table"),
        ("this is = not toml", "not valid TOML"),
    ],
)
def test_bad_sweep_files_name_file_and_key(text: str, message: str) -> None:
    with pytest.raises(SweepError, match=message) as err:
        parse_sweep_toml(text, source="s.toml")
    assert str(err.value).startswith("s.toml")


def test_an_empty_sweep_file_is_one_task_with_no_args() -> None:
    assert list(parse_sweep_toml("", source="s.toml").grid) == [{}]


def test_a_million_point_grid_is_lazy() -> None:
    values = ",".join(str(i) for i in range(100))
    grid = grid_from_items([f"a={values}", f"b={values}", f"c={values}"])
    assert len(grid) == 1_000_000
    first, second = itertools.islice(grid, 2)
    assert first == {"a": 0, "b": 0, "c": 0} and second == {"a": 0, "b": 0, "c": 1}


def test_points_do_not_share_top_level_dicts() -> None:
    grid = Grid({"fixed": 1}, (((("a",),), ((1,), (2,))),))
    points = list(grid)
    points[0]["fixed"] = 99
    assert points[1]["fixed"] == 1 and grid.fixed == {"fixed": 1}


axes = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d.e", "d.f"]),
        st.lists(st.integers(), min_size=1, max_size=3),
    ),
    max_size=3,
    unique_by=lambda t: t[0],
)


@given(axes)
def test_grid_matches_itertools_product(items: list[tuple[str, list[int]]]) -> None:
    grid = grid_from_items([f"{k}={','.join(map(str, vs))}" for k, vs in items])
    expected = []
    for combo in itertools.product(*(vs for _, vs in items)):
        point: dict[str, Any] = {}
        for (key, _), v in zip(items, combo, strict=True):
            point = merge(point, _nest(key, v))
        expected.append(point)
    assert list(grid) == expected
    assert len(grid) == len(expected)


def _nest(key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    return {head: _nest(rest, value) if rest else value}


def test_merge_is_deep_and_leaves_inputs_alone() -> None:
    base = {"m": {"a": 1}, "x": 1}
    assert merge(base, {"m": {"b": 2}, "x": {"y": 1}}) == {"m": {"a": 1, "b": 2}, "x": {"y": 1}}
    assert base == {"m": {"a": 1}, "x": 1}
