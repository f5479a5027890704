"""Placeholders as the shell reads them: each value comes back exactly, in every quoting context,
under bash and dash; places where no quoting is safe are refused with advice.

The property runs real ``bash -c`` and ``dash -c`` (Debian's /bin/sh) on rendered templates whose
program is the shell's own ``printf``, so each example costs no process start beyond the shell.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings

from dispatcher.core.template import Template, render
from dispatcher.core.template_shell import BARE, DOUBLE, SINGLE
from dispatcher.errors import TemplateError, UnsafeTemplateError
from tests.template_cases import Case, cases

SHELLS = [s for s in ("bash", "dash") if shutil.which(s)]
PRINTF = "printf 'W%%s\\0'"  # one NUL-ended word per argument ("W" marks an empty one)


def argv_from(shell: str, command: str) -> list[str]:
    done = subprocess.run([shell, "-c", command], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0 and done.stderr == b"", (shell, command, done.stderr)
    words = done.stdout.decode("utf-8").split("\0")
    assert words[-1] == "" and all(w.startswith("W") for w in words[:-1]), done.stdout
    return [w[1:] for w in words[:-1]]


def test_both_shells_are_here() -> None:
    assert SHELLS == ["bash", "dash"], "install dash (apt-get install -y dash)"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases())
@example(case=Case("'%{x}'", {"x": "a; touch @CANARY@"}, ["a; touch @CANARY@"]))
@example(case=Case('"%{x}"', {"x": "$(touch @CANARY@)"}, ["$(touch @CANARY@)"]))
@example(case=Case("--name='%{x}'", {"x": "it's"}, ["--name=it's"]))
@example(case=Case('"run-%{x}"', {"x": '\\"`'}, ['run-\\"`']))
@example(case=Case("'a%{x}b' out_%{x}.json", {"x": 7}, ["a7b", "out_7.json"]))
def test_every_value_reaches_the_program_exactly_under_bash_and_dash(
    case: Case, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    case = case.with_canary(str(canary))
    command = render(f"{PRINTF} {case.words}", case.args)
    for shell in SHELLS:
        assert argv_from(shell, command) == case.expected, (shell, case.words, command)
    assert not canary.exists()


@pytest.mark.parametrize(
    ("template", "found"),
    [
        ("p %{a} --lr=%{b} out_%{c}.json", (BARE, BARE, BARE)),
        ("p '%{a}' --name='%{b}' 'x%{c}y'", (SINGLE, SINGLE, SINGLE)),
        ('p "%{a}" "run-%{b}" "$HOME/%{c}"', (DOUBLE, DOUBLE, DOUBLE)),
        ("p '%{a}'\"%{b}\"%{c}", (SINGLE, DOUBLE, BARE)),
        ("p $(date) %{a} \"$(date)\" '%{b}'", (BARE, SINGLE)),
        ("p ${HOME}/%{a} `date` $((1+2)) %{b}", (BARE, BARE)),
        ("cat <<EOF\n$HOME %{x}\nEOF\np %{a}", None),  # refused: see below
        ("cat <<'EOF'\nliteral\nEOF\np %{a} '%{b}'", (BARE, SINGLE)),
        ("cat <<-EOF\n\tbody\n\tEOF\np %{a}", (BARE,)),
        ("p a#%{a} '#'%{b} # %%{c} is not one", (BARE, BARE)),
        ("p \\$%{a} '$'%{b}", (BARE, BARE)),
        ("[ %{a} = yes ] && p %{b}", (BARE, BARE)),
        ("p 'it'\\''s' %{a}", (BARE,)),
        ('p "a \\" $(echo ")") b" %{a}', (BARE,)),
    ],
)
def test_contexts(template: str, found: tuple[str, ...] | None) -> None:
    if found is None:
        with pytest.raises(UnsafeTemplateError):
            Template(template)
        return
    assert Template(template).contexts == found


@pytest.mark.parametrize(
    ("template", "where", "advice"),
    [
        ("echo $(cat %{x})", "inside $(...)", 'X=%{x}; echo "$(cat "$X")"'),
        ('echo "$(cat %{x})"', "inside $(...)", "X=%{x}"),
        ("echo `cat %{x}`", "inside backticks", "X=%{x}"),
        ('echo "`cat %{x}`"', "inside backticks", "X=%{x}"),
        ("echo ${%{x}:-a}", "inside ${...}", 'X=%{x}; echo "${X%.txt}"'),
        ('echo "${A:-%{x}}"', "inside ${...}", "X=%{x}"),
        ("echo $((1 + %{x}))", "inside arithmetic", "do the arithmetic in the program"),
        ("(( %{x} > 1 )) && echo", "inside arithmetic", "do the arithmetic in the program"),
        ("echo $[%{x}]", "inside arithmetic", "do the arithmetic in the program"),
        ("[[ %{x} -eq 1 ]]", "inside [[ ... ]]", "use [ ... ] (test) instead"),
        ("cat <<EOF\nhello %{x}\nEOF", "inside a here-document", "write $X in the here-document"),
        ("cat <<'EOF'\n%{x}\nEOF", "inside a here-document", "(X=%{x})"),
        ("cat <<%{x}\nEOF", "inside a here-document", "(X=%{x})"),
        ("echo a # %{x}", "inside a comment", "move it before the #"),
        ("echo a\n#%{x}", "inside a comment", "move it before the #"),
        ("echo \\%{x}", "right after a backslash", "remove the backslash"),
        ('echo "\\%{x}"', "right after a backslash", "remove the backslash"),
        ("echo $%{x}", "right after a $", "quote the $ ('$'%{x})"),
        ('echo "$%{x}"', "right after a $", "quote the $"),
        ("echo $'a %{x}'", "inside or after $'...'", "use '...' quotes instead"),
        ("echo $'a\\'b' %{x}", "inside or after $'...'", "use '...' quotes instead"),
    ],
)
def test_refused_placeholders_say_where_and_how_to_write_them(
    template: str, where: str, advice: str
) -> None:
    with pytest.raises(UnsafeTemplateError) as err:
        Template(template)
    message = str(err.value)
    assert message.startswith("unsafe template: %{x} in ")
    assert where in message and advice in message and "\n" not in message


@pytest.mark.parametrize(
    "template", ["echo '%{x}", 'echo "%{x}', "echo %{x} $(date", "echo %{x} `a"]
)
def test_an_unclosed_quote_or_group_is_refused(template: str) -> None:
    with pytest.raises(TemplateError, match="never closed"):
        Template(template)


def test_a_dollar_single_quote_without_backslashes_is_read_alike_and_allowed() -> None:
    assert Template("echo $'a b' %{x}").contexts == (BARE,)


def test_values_that_stay_unquoted_are_plain_words_only() -> None:
    # Unquoted values let the helper run the command without a shell; "=" and "," are quoted
    # (an assignment at a command's start, brace expansion) and so are reserved words.
    assert render("p %{a} %{b} %{c} %{d} %{e}", {"a": "x.y", "b": "a=b", "c": "a,b", "d": "if",
                  "e": 0.5}) == "p x.y 'a=b' 'a,b' 'if' 0.5"  # fmt: skip
    assert render("%{p} --x", {"p": "A=1"}) == "'A=1' --x"
