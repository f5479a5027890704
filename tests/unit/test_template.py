"""Command templates: placeholder syntax, value rendering, quoting that survives a real shell."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core.template import (
    Template,
    join_words,
    placeholders,
    quote_value,
    render,
    render_value,
)
from dispatcher.errors import TemplateError

# Text a shell word can hold: anything but NUL (surrogates are not text a terminal can send).
word_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]))
nasty = st.sampled_from(
    ["", " ", "'", '"', "$(rm -rf ~)", "`id`", "; rm -rf /", "a\nb", "\\", "%{x}", "%%", "-n", "*"]
)
scalar = st.one_of(
    word_text,
    nasty,
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
value = st.one_of(
    scalar, st.lists(scalar, max_size=3), st.dictionaries(word_text, scalar, max_size=3)
)


@pytest.mark.parametrize(
    ("val", "word"),
    [
        ("plain", "plain"),
        ("two words", "two words"),
        (3, "3"),
        (-0.5, "-0.5"),
        (1e-05, "1e-05"),
        (True, "true"),
        (False, "false"),
        (None, ""),
        ([1, "a b"], '[1,"a b"]'),
        ({"k": [1, 2]}, '{"k":[1,2]}'),
        ("ünï", "ünï"),
    ],
)
def test_values_render_as_documented(val: Any, word: str) -> None:
    assert render_value(val) == word
    assert shlex.split(render("p %{v}", {"v": val})) == ["p", word]


def test_none_is_an_empty_word_not_a_missing_one() -> None:
    assert render("p %{a} x", {"a": None}) == "p '' x"
    assert shlex.split(render("p %{a} x", {"a": None})) == ["p", "", "x"]


def test_double_percent_is_a_literal_percent_and_a_lone_one_stays() -> None:
    assert render("date +%Y %%{a} 100%% %{a}%", {"a": 1}) == "date +%Y %{a} 100% 1%"
    assert placeholders("%%{a} %{b}") == ["b"]


def test_dotted_keys_reach_nested_args_and_exact_keys_win() -> None:
    assert render("%{model.depth}", {"model": {"depth": 4}}) == "4"
    assert render("%{a.b}", {"a.b": "flat", "a": {"b": "nested"}}) == "flat"


def test_placeholders_in_order_without_repeats() -> None:
    assert placeholders("%{b} %{a} %{b} %{m.x}") == ["b", "a", "m.x"]
    assert Template("x").keys == ()


def test_missing_key_names_the_key_and_the_args() -> None:
    with pytest.raises(TemplateError, match=r"%\{lr\}.*\{\"seed\":1\}"):
        render("train --lr %{lr}", {"seed": 1})
    with pytest.raises(TemplateError, match=r"%\{m\.d\}"):
        render("%{m.d}", {"m": {"e": 1}})
    with pytest.raises(TemplateError, match=r"%\{m\.d\}"):
        render("%{m.d}", {"m": 3})


@pytest.mark.parametrize("bad", ["%{", "x %{lr", "%{}", "%{a b}", "%{a..b}", "%{.a}", "%{a{b}"])
def test_malformed_placeholders_are_errors(bad: str) -> None:
    with pytest.raises(TemplateError, match="template"):
        Template(bad)


def test_nul_and_unrenderable_values_are_refused() -> None:
    with pytest.raises(TemplateError, match="NUL"):
        render("p %{a}", {"a": "x\0y"})
    with pytest.raises(TemplateError, match=r"%\{a\}.*bytes"):
        render("p %{a}", {"a": b"raw"})
    # JSON escapes NUL, so containers holding one still make a valid word.
    assert shlex.split(render("%{a}", {"a": ["x\0"]})) == ['["x\\u0000"]']


def test_nan_renders_as_json_does() -> None:
    assert render_value(float("nan")) == "NaN"
    assert render_value(float("-inf")) == "-Infinity"


def test_join_words_quotes_literals_and_keeps_placeholders_live() -> None:
    words = ["python", "train.py", "--out=%{dir}/a b", "%{lr}", "50%", "", "it's"]
    template = join_words(words)
    assert placeholders(template) == ["dir", "lr"]
    rendered = render(template, {"dir": "runs/x y", "lr": 0.1})
    assert shlex.split(rendered) == [
        "python",
        "train.py",
        "--out=runs/x y/a b",
        "0.1",
        "50%",
        "",
        "it's",
    ]


@given(st.lists(word_text, max_size=5))
def test_join_words_without_placeholders_is_shlex_join(words: list[str]) -> None:
    words = [w.replace("%", "") for w in words]
    assert shlex.split(render(join_words(words), {})) == words


@given(a=value, b=value)
def test_each_value_is_exactly_one_word(a: Any, b: Any) -> None:
    command = render("prog %{a} %{b}", {"a": a, "b": b})
    assert shlex.split(command) == ["prog", render_value(a), render_value(b)]
    assert quote_value(a) in command


@settings(max_examples=25, deadline=None)
@given(a=value, b=value)
def test_a_real_shell_sees_the_same_words(a: Any, b: Any) -> None:
    command = render("printf '%s\\0' %{a} %{b}", {"a": a, "b": b})
    out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, check=True).stdout
    assert out.decode("utf-8").split("\0")[:-1] == [render_value(a), render_value(b)]
