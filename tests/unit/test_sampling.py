"""Random sweep points (core.sampling) and the one add path (core.batch.assemble)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core import sampling
from dispatcher.core.batch import assemble
from dispatcher.core.sweep import Grid, grid_from_items
from dispatcher.core.sweep_file import parse_sweep_toml
from dispatcher.errors import SweepError, UsageError
from tests.unit.test_purity import violations

SPECS = """
lr = { loguniform = [1e-5, 1e-1] }
dropout = { uniform = [0.0, 0.5] }
layers = { randint = [2, 8] }
act = { choice = ["relu", "gelu"] }
"""


def points(text: str) -> list[dict[str, Any]]:
    return list(parse_sweep_toml('command = "x"\n' + text, source="s.toml").grid)


@pytest.mark.parametrize("module", ["core.sampling", "core.batch"])
def test_new_pure_modules_import_nothing_impure(module: str) -> None:
    assert violations(module) == []


def test_the_same_file_gives_the_same_pinned_points() -> None:
    # Pinned: string seeds go through SHA-512 and these draws are specified by Python's random
    # module, so a change here means re-submitted sweeps would no longer match.
    assert points("[random]\nsamples = 3\nseed = 0\n" + SPECS) == [
        {"lr": 3.73419e-05, "dropout": 0.385073, "layers": 5, "act": "gelu"},
        {"lr": 0.0436655, "dropout": 0.133392, "layers": 2, "act": "relu"},
        {"lr": 0.000164661, "dropout": 0.0429889, "layers": 7, "act": "relu"},
    ]
    assert points("[random]\nsamples = 3\n" + SPECS) == points(
        "[random]\nsamples = 3\nseed = 0\n" + SPECS
    )  # seed defaults to 0
    assert points("[random]\nsamples = 3\nseed = 1\n" + SPECS) != points(
        "[random]\nsamples = 3\n" + SPECS
    )


def test_more_samples_keep_the_earlier_points_and_a_new_key_leaves_others_alone() -> None:
    five = points("[random]\nsamples = 5\n" + SPECS)
    assert points("[random]\nsamples = 9\n" + SPECS)[:5] == five
    more_keys = points("[random]\nsamples = 5\nwd = { uniform = [0, 1] }\n" + SPECS)
    assert [{k: v for k, v in p.items() if k != "wd"} for p in more_keys] == five


def test_random_points_cross_the_grid_before_repeat_and_may_nest() -> None:
    text = (
        "repeat = 2\n[grid]\nopt = ['adam', 'sgd']\n"
        "[random]\nsamples = 3\nseed = 4\nmodel.depth = { randint = [1, 3] }\n"
    )
    got = points(text)
    assert len(got) == 2 * 3 * 2
    assert [p["opt"] for p in got[:6]] == ["adam"] * 6 and [p["repeat"] for p in got[:2]] == [0, 1]
    assert got[0]["model"]["depth"] == got[1]["model"]["depth"]  # repeats of one point
    assert [p["model"] for p in got[:6:2]] == [p["model"] for p in got[6::2]]  # same per opt


def test_seed_and_samples_as_distributions_are_args() -> None:
    got = points("[random]\nsamples = 4\nseed = { randint = [100, 200] }\n")
    assert len(got) == 4 and all(100 <= p["seed"] <= 200 for p in got)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("lr = { normal = [0, 1] }", r"s\.toml: random\.lr: unknown distribution 'normal'"),
        ("lr = 0.1", r"random\.lr: expected a distribution, one of .*uniform"),
        ("lr = { uniform = 3 }", r"random\.lr: expected a distribution"),
        ("lr = { uniform = [1, 0] }", r"random\.lr: uniform needs finite LOW <= HIGH"),
        ("lr = { uniform = [0, 1, 2] }", r"random\.lr: uniform needs \[LOW, HIGH\]"),
        ("lr = { loguniform = [0, 1] }", r"random\.lr: loguniform needs LOW > 0"),
        ("n = { randint = [1, 2.5] }", r"random\.n: randint bounds must be integers"),
        ("n = { uniform = ['a', 'b'] }", r"random\.n: uniform bounds must be numbers"),
        ("c = { choice = [] }", r"random\.c: choice needs at least one value"),
    ],
)
def test_bad_distributions_name_the_file_key_and_what_is_allowed(table: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        points(f"[random]\nsamples = 2\n{table}\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[random]\nlr = { uniform = [0, 1] }", r"s\.toml: random: add samples = N"),
        ("[random]\nsamples = 0\nlr = { uniform = [0, 1] }", "samples must be 1 to"),
        ("[random]\nsamples = true\nlr = { uniform = [0, 1] }", "samples must be an integer"),
        ("[random]\nsamples = 2\nseed = 'x'\nlr = { uniform = [0, 1] }", "seed must be an int"),
        ("[random]\nsamples = 2", "no key to draw"),
        ("[grid]\nlr = [1]\n[random]\nsamples = 2\nlr = { uniform = [0, 1] }", "'lr' is set twice"),
        ("random = 3", r"'random' must be a table"),
    ],
)
def test_bad_random_tables(text: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        points(text)


@settings(max_examples=100, deadline=None)
@given(
    lo=st.floats(-1e6, 1e6),
    width=st.floats(0, 1e6),
    pos=st.floats(1e-9, 1e6),
    ratio=st.floats(1, 1e6),
    ints=st.tuples(st.integers(-100, 100), st.integers(0, 50)),
    seed=st.integers(-(2**70), 2**70),
)
def test_draws_stay_within_bounds_and_have_six_significant_digits(
    lo: float, width: float, pos: float, ratio: float, ints: tuple[int, int], seed: int
) -> None:
    specs = {
        "u": {"uniform": [lo, lo + width]},
        "l": {"loguniform": [pos, pos * ratio]},
        "r": {"randint": [ints[0], ints[0] + ints[1]]},
        "c": {"choice": [1, "a", None]},
    }
    _, rows = sampling.from_mapping(specs, 20, seed)
    for u, lg, r, c in rows:
        assert lo <= u <= lo + width and pos <= lg <= pos * ratio
        assert isinstance(r, int) and ints[0] <= r <= sum(ints) and c in (1, "a", None)
        for x in (u, lg):
            assert math.isfinite(x) and (
                x == float(f"{x:.6g}") or x in (lo, lo + width, pos, pos * ratio)
            )


def test_cli_items_parse_kinds_and_values() -> None:
    paths, rows = sampling.from_items(
        ["lr=loguniform:1e-5,0.1", "act=choice:relu,gelu,1", "m.d=randint:1,3"], 4, 7
    )
    assert paths == (("lr",), ("act",), ("m", "d"))
    assert len(rows) == 4 and all(a in ("relu", "gelu", 1) and 1 <= d <= 3 for _, a, d in rows)
    assert sampling.from_mapping(
        {"lr": {"loguniform": [1e-5, 0.1]}, "act": {"choice": ["relu", "gelu", 1]},
         "m.d": {"randint": [1, 3]}}, 4, 7,
    ) == (paths, rows)  # fmt: skip


@pytest.mark.parametrize(
    ("items", "samples", "message"),
    [
        (["lr=0.1"], 3, "expected KEY=KIND:A,B"),
        (["lr=gauss:0,1"], 3, r"--random 'lr=gauss:0,1': unknown distribution"),
        (["lr=uniform:0,1", "lr=uniform:0,2"], 3, "given twice"),
        (["lr=uniform:0,1"], None, "needs --samples N"),
    ],
)
def test_bad_cli_items(items: list[str], samples: int | None, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        sampling.from_items(items, samples, 0)


def test_assemble_orders_groups_and_lets_given_settings_win_over_the_file() -> None:
    sweep = parse_sweep_toml(
        'command = "f %{x}"\nname = "file"\npriority = 3\nmax_running = 2\n'
        'outputs = ["out/*.json"]\n[grid]\nx = [7, 8]',
        source="s.toml",
    )
    batch = assemble(
        None,
        args=[{"y": 0}, {"y": 1}],  # merged into every point; the points once per args
        grid=grid_from_items(["x=1,2"]),
        sweep=sweep,
        rows=[{"x": 9}],
        priority=5,
    )
    assert [(a["x"], a["y"]) for a, _ in batch.rendered()] == [
        (1, 0), (2, 0), (7, 0), (8, 0), (9, 0), (1, 1), (2, 1), (7, 1), (8, 1), (9, 1),
    ]  # fmt: skip
    assert [a for a, _ in assemble("a", args=[{"y": 0}, {"y": 1}]).rendered()] == [
        {"y": 0}, {"y": 1},
    ]  # fmt: skip
    assert (batch.template, batch.name, batch.priority, batch.max_running, batch.outputs) == (
        "f %{x}", "file", 5, 2, ("out/*.json",),
    )  # fmt: skip
    plain = assemble("g %{y}", random=sampling.from_items(["y=randint:1,1"], 2, 0))
    assert [c for _, c in plain.rendered()] == ["g 1", "g 1"]
    assert (plain.max_running, plain.outputs, plain.name) == (None, (), None)
    assert len(assemble("h")) == 1 and isinstance(assemble("h", grid=Grid()).groups[0], Grid)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_running": 0}, "max running must be at least 1"),
        ({"outputs": ["/etc/passwd"]}, "output glob '/etc/passwd'"),
        ({"outputs": ["out/../../x"]}, "no '..'"),
        ({"outputs": [""]}, "not empty"),
        ({"outputs": "out/*.json"}, "must be a list of globs"),
    ],
)
def test_assemble_refuses_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        assemble("x", **kwargs).check()


def test_assemble_needs_a_command() -> None:
    with pytest.raises(UsageError, match="no command given"):
        assemble(None)
    with pytest.raises(UsageError, match="the command is empty"):
        assemble("  ")


def test_the_example_sweep_file_parses_and_its_random_block_works_uncommented() -> None:
    text = (Path(__file__).resolve().parents[2] / "examples" / "sweep.toml").read_text()
    sweep = parse_sweep_toml(text, source="examples/sweep.toml")
    assert len(sweep.grid) == 24 and sweep.max_running == 4
    assert sweep.outputs == ("out/{task_id}.json",)
    block = text[text.index("# [random]") :]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    with_random = parse_sweep_toml(text + "\n" + uncommented, source="examples/sweep.toml")
    assert len(with_random.grid) == 24 * 20
