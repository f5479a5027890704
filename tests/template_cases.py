"""Generated command templates: placeholders in every context the shell allows, with the argv
each must give.

A template is a program followed by words; a word is one to three segments, each a bare run of
text, a '...' string or a "..." string, holding literal text and placeholders. Literal text is
drawn so that its meaning for the shell is known (escapes included: ``\\;`` bare, ``\\$`` inside
double quotes, ``\\a`` which double quotes keep as two characters), so the expected argv is the
concatenation of each word's literal meaning and its placeholders' values. Values come from any
text, plus ones that would run ``touch CANARY`` if they ever became code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from dispatcher.core.template import render_value

#: Replaced by a real path by each test: a file that must never appear.
CANARY = "@CANARY@"
#: Any text a command-line word can hold: everything but NUL and lone surrogates.
CHARS = st.characters(blacklist_categories=["Cs"], blacklist_characters="\0")
TRICKY = [
    "'", '"', "\\", "\n", " ", "", "-n", "--help", "%", "%{v0}", "%%", "*", "~", "$HOME", "!",
    "a=b", "{a,b}", "if", "#x", "ünï €ø 😀", "a\\", "\\'",
    f"$(touch {CANARY})", f"`touch {CANARY}`", f"'; touch {CANARY}; '", f'"; touch {CANARY}; "',
    f"'$(touch {CANARY})'", f'"$(touch {CANARY})"', f"\\'; touch {CANARY} #", f"\ntouch {CANARY}",
    f"${{x:-$(touch {CANARY})}}", f"$((1))$(touch {CANARY})",
]  # fmt: skip
VALUES = st.one_of(
    st.text(CHARS, max_size=10), st.sampled_from(TRICKY), st.integers(-(10**6), 10**6)
)

# (template text, what the shell reads it as) for one piece of literal text in each context.
_BARE_CHARS = "abcXYZ019_./:@+=-"
_BARE = st.one_of(
    st.sampled_from(_BARE_CHARS).map(lambda c: (c, c)),
    st.sampled_from(";'\"$ \\()|&<>*?[#`~{},").map(lambda c: ("\\" + c, c)),
    st.just(("%%", "%")),
)
_SINGLE = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0'")).map(
    lambda t: (t.replace("%", "%%"), t)
)
_DOUBLE = st.one_of(
    st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters='\0$`"\\%'), min_size=1
    ).map(lambda t: (t, t)),
    st.sampled_from('$`"\\').map(lambda c: ("\\" + c, c)),
    st.sampled_from("an'").map(lambda c: ("\\" + c, "\\" + c)),  # kept as two characters
    st.just(("%%", "%")),
)
_LITERAL = {"bare": _BARE, "single": _SINGLE, "double": _DOUBLE}
_QUOTE = {"bare": "", "single": "'", "double": '"'}


@dataclass(frozen=True)
class Case:
    """Words for a template (after its program), their args, and the argv they must give."""

    words: str
    args: dict[str, Any]
    expected: list[str]

    def with_canary(self, path: str) -> Case:
        """The case with CANARY in values (and expected words) replaced by ``path``."""
        args = {
            k: v.replace(CANARY, path) if isinstance(v, str) else v for k, v in self.args.items()
        }
        expected = [w.replace(CANARY, path) for w in self.expected]
        return Case(self.words, args, expected)


@st.composite
def cases(draw: st.DrawFn, max_words: int = 4) -> Case:
    """One generated Case (at least one word)."""
    args: dict[str, Any] = {}
    words: list[str] = []
    expected: list[str] = []
    for _ in range(draw(st.integers(1, max_words))):
        text, meaning = [], []
        for _ in range(draw(st.integers(1, 3))):
            context = draw(st.sampled_from(["bare", "single", "double"]))
            seg_text, seg_meaning = [], []
            for _ in range(draw(st.integers(1, 3))):
                if draw(st.booleans()):
                    if args and draw(st.integers(0, 4)) == 0:
                        key = draw(st.sampled_from(sorted(args)))  # one key in two contexts
                    else:
                        key = f"v{len(args)}"
                        args[key] = draw(VALUES)
                    seg_text.append("%{" + key + "}")
                    seg_meaning.append(render_value(args[key]))
                else:
                    lit, means = draw(_LITERAL[context])
                    seg_text.append(lit)
                    seg_meaning.append(means)
            q = _QUOTE[context]
            text.append(q + "".join(seg_text) + q)
            meaning.append("".join(seg_meaning))
        words.append("".join(text))
        expected.append("".join(meaning))
    return Case(" ".join(words), args, expected)
