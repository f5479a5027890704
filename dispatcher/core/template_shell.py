"""Where each placeholder of a template sits once a POSIX shell (bash or dash) reads it. No I/O.

``contexts`` scans a template's literal text the way the shell will tokenize it and gives each
placeholder its quoting context: a bare word (``%{x}``, ``--lr=%{x}``), inside ``'...'`` or inside
``"..."``; ``quote_for`` then writes a value so that the shell reads back exactly that value in
that context. A placeholder where no quoting can keep its value from being read as code (inside
``$(...)``, backticks, ``${...}``, arithmetic, ``[[ ... ]]``, a here-document, a comment, right
after ``$`` or a backslash) raises ``UnsafeTemplateError`` saying how to write it instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, NoReturn

from dispatcher.errors import TemplateError, UnsafeTemplateError

BARE: Final = "bare"
SINGLE: Final = "single"
DOUBLE: Final = "double"


def _via_var(example: str) -> str:
    return f"assign it to a variable first and use that: X=%{{k}}; {example}"


#: Where a placeholder is refused: (what the place is, how to write it instead).
_REFUSED: Final = {
    "cmdsub": ("inside $(...)", _via_var('echo "$(cat "$X")"')),
    "backticks": ("inside backticks", _via_var('echo "$(cat "$X")"')),
    "param": ("inside ${...}", _via_var('echo "${X%.txt}"')),
    "arith": (
        "inside arithmetic ($((...)), ((...)) or $[...])",
        "do the arithmetic in the program, or pass the value as a word: prog %{k}",
    ),
    "dbracket": (
        "inside [[ ... ]], whose operands bash may evaluate as arithmetic",
        'use [ ... ] (test) instead, e.g. [ %{k} = "yes" ]',
    ),
    "heredoc": (
        "inside a here-document",
        "assign it to a variable first (X=%{k}) and write $X in the here-document",
    ),
    "comment": (
        "inside a comment, where the shell drops it",
        "move it before the #, or quote the # ('#')",
    ),
    "ansi": (
        "inside or after $'...' quoting, which bash and dash read differently",
        "use '...' quotes instead",
    ),
    "dollar": ("right after a $", "quote the $ ('$'%{k}) or remove it"),
    "backslash": ("right after a backslash", "remove the backslash; the value is quoted for you"),
}
_BLANK = frozenset(" \t")
_OPERATOR = frozenset(";&|()<>")
_WORD_END = frozenset(" \t\n;&|()<>")

# Values made only of these characters stay unquoted (the helper then runs the command without a
# shell): shlex's safe set less "=" (an assignment at a command's start) and "," (brace expansion).
_UNSAFE_BARE = re.compile(r"[^A-Za-z0-9_@%+:./-]")
#: Words the shell reads as syntax when unquoted at a command's start.
_RESERVED = frozenset(
    {"if", "then", "else", "elif", "fi", "case", "esac", "for", "select", "while", "until",
     "do", "done", "in", "function", "time", "coproc"}
)  # fmt: skip
_DQ_SPECIAL = re.compile(r'([\\$`"])')


def quote_for(context: str, text: str) -> str:
    """``text`` written so that the shell reads it back exactly, placed in ``context``.

    Bare: one word, single-quoted unless made of safe characters only. Inside '...': each ' is
    closed, escaped and reopened ('\\''). Inside "...": \\, $, ` and " are escaped by backslash.
    """
    if context == SINGLE:
        return text.replace("'", "'\\''")
    if context == DOUBLE:
        return _DQ_SPECIAL.sub(r"\\\1", text)
    if text and not _UNSAFE_BARE.search(text) and text not in _RESERVED:
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def contexts(literals: Sequence[str], keys: Sequence[str], text: str) -> tuple[str, ...]:
    """The quoting context of each placeholder (``literals`` and ``keys`` alternate, as in
    ``Template``); UnsafeTemplateError for a refused one, TemplateError for an unclosed quote."""
    return _Scan(literals, keys, text).run()


class _Scan:
    """One pass over the template's characters, with each placeholder as its index (an int)."""

    def __init__(self, literals: Sequence[str], keys: Sequence[str], text: str) -> None:
        seq: list[str | int] = []
        for k, lit in enumerate(literals):
            seq.extend(lit)
            if k < len(keys):
                seq.append(k)
        self.seq = seq
        self.n = len(seq)
        self.keys = keys
        self.text = text
        self.found: list[str] = [BARE] * len(keys)

    def ch(self, i: int) -> str:
        """The character at ``i``; "" for a placeholder or the end."""
        x = self.seq[i] if i < self.n else ""
        return x if isinstance(x, str) else ""

    def refuse(self, k: int, kind: str) -> NoReturn:
        where, advice = _REFUSED[kind]
        key = "%{" + self.keys[k] + "}"
        raise UnsafeTemplateError(
            f"unsafe template: {key} in {_short(self.text)} is {where};"
            f" {advice.replace('%{k}', key)}"
        )

    def unclosed(self, what: str) -> NoReturn:
        raise TemplateError(f"template {_short(self.text)}: a {what} is never closed; close it")

    def run(self) -> tuple[str, ...]:
        seq, i = self.seq, 0
        start = True  # at the start of a word (where # begins a comment)
        heredocs: list[tuple[str, bool]] = []
        dbracket = False
        while i < self.n:
            x = seq[i]
            if isinstance(x, int):
                if dbracket:
                    self.refuse(x, "dbracket")
                start, i = False, i + 1
            elif x == "\\":
                self.escaped(i)
                start, i = start and self.ch(i + 1) == "\n", i + 2
            elif x == "'":
                start, i = False, self.single(i + 1)
            elif x == '"':
                start, i = False, self.double(i + 1)
            elif x == "`":
                start, i = False, self.skip_backticks(i + 1, "backticks")
            elif x == "$":
                start, i = False, self.dollar(i, quoted=False)
            elif x == "#" and start:
                while i < self.n and seq[i] != "\n":
                    if isinstance(seq[i], int):
                        self.refuse(int(seq[i]), "comment")
                    i += 1
            elif x == "\n":
                start, i = True, self.heredoc_bodies(i + 1, heredocs)
                heredocs = []
            elif x == "<" and self.ch(i + 1) == "<" and self.ch(i + 2) != "<":
                i = self.heredoc_word(i + 2, heredocs)
                start = True
            elif x == "(" and start and self.ch(i + 1) == "(":
                i = self.skip_group(i + 2, "arith", "(", ")", depth=2)
            elif x == "[" and start and self.ch(i + 1) == "[" and self.ch(i + 2) in _WORD_END:
                dbracket, i = True, i + 2
            elif x == "]" and start and self.ch(i + 1) == "]" and self.ch(i + 2) in _WORD_END:
                dbracket, start, i = False, False, i + 2
            else:
                start, i = x in _BLANK or x in _OPERATOR, i + 1
        return tuple(self.found)

    def escaped(self, i: int) -> None:
        """A backslash at ``i`` escapes what follows: refused when that is a placeholder (it
        would escape the value's opening quote)."""
        nxt = self.seq[i + 1] if i + 1 < self.n else ""
        if isinstance(nxt, int):
            self.refuse(nxt, "backslash")

    def single(self, i: int) -> int:
        while i < self.n:
            x = self.seq[i]
            if isinstance(x, int):
                self.found[x] = SINGLE
            elif x == "'":
                return i + 1
            i += 1
        self.unclosed("' quote")

    def double(self, i: int) -> int:
        while i < self.n:
            x = self.seq[i]
            if isinstance(x, int):
                self.found[x] = DOUBLE
                i += 1
            elif x == '"':
                return i + 1
            elif x == "\\":
                self.escaped(i)
                i += 2
            elif x == "`":
                i = self.skip_backticks(i + 1, "backticks")
            elif x == "$":
                i = self.dollar(i, quoted=True)
            else:
                i += 1
        self.unclosed('" quote')

    def dollar(self, i: int, *, quoted: bool) -> int:
        """Past the expansion that starts with the $ at ``i``."""
        nxt = self.seq[i + 1] if i + 1 < self.n else ""
        if isinstance(nxt, int):
            self.refuse(nxt, "dollar")
        if nxt == "(" and self.ch(i + 2) == "(":
            return self.skip_group(i + 3, "arith", "(", ")", depth=2)
        if nxt == "(":
            return self.skip_group(i + 2, "cmdsub", "(", ")")
        if nxt == "{":
            return self.skip_group(i + 2, "param", "{", "}")
        if nxt == "[":
            return self.skip_group(i + 2, "arith", "[", "]")
        if nxt == "'" and not quoted:
            return self.ansi(i + 2)
        return i + 1

    def ansi(self, i: int) -> int:
        """$'...': bash ends it at the first ' not escaped by a backslash, dash (which reads $
        then '...') at the first '. Placeholders inside are refused, and after it too when
        the two shells disagree on its end."""
        ends: list[int] = []
        for escapes in (True, False):
            j = i
            while j < self.n and self.seq[j] != "'":
                if isinstance(self.seq[j], int):
                    self.refuse(int(self.seq[j]), "ansi")
                j += 2 if escapes and self.seq[j] == "\\" else 1
            if j >= self.n:
                self.unclosed("$' quote")
            ends.append(j + 1)
        if ends[0] != ends[1]:
            later = [x for x in self.seq[ends[1] :] if isinstance(x, int)]
            if later:
                self.refuse(later[0], "ansi")
        return max(ends)

    def skip_group(self, i: int, kind: str, open_: str, close: str, depth: int = 1) -> int:
        """Past the ``close`` that ends a group opened before ``i``; every placeholder inside is
        refused as ``kind``."""
        seq = self.seq
        while i < self.n:
            x = seq[i]
            if isinstance(x, int):
                self.refuse(x, kind)
            if x == "\\":
                i += 2
                continue
            if x == "'":
                i = self.skip_quote(i + 1, kind)
            elif x == '"':
                i = self.skip_dq(i + 1, kind)
            elif x == "`":
                i = self.skip_backticks(i + 1, kind)
            elif x == "$" and self.ch(i + 1) in ("(", "{", "["):
                c = self.ch(i + 1)
                i = self.skip_group(i + 2, kind, c, {"(": ")", "{": "}", "[": "]"}[c])
            else:
                if x == open_:
                    depth += 1
                elif x == close:
                    depth -= 1
                    if depth == 0:
                        return i + 1
                i += 1
        self.unclosed(f"{open_}...{close} group")

    def skip_quote(self, i: int, kind: str) -> int:
        while i < self.n:
            x = self.seq[i]
            if isinstance(x, int):
                self.refuse(x, kind)
            if x == "'":
                return i + 1
            i += 1
        self.unclosed("' quote")

    def skip_dq(self, i: int, kind: str) -> int:
        while i < self.n:
            x = self.seq[i]
            if isinstance(x, int):
                self.refuse(x, kind)
            if x == '"':
                return i + 1
            if x == "\\":
                i += 2
            elif x == "`":
                i = self.skip_backticks(i + 1, kind)
            elif x == "$" and self.ch(i + 1) in ("(", "{", "["):
                c = self.ch(i + 1)
                i = self.skip_group(i + 2, kind, c, {"(": ")", "{": "}", "[": "]"}[c])
            else:
                i += 1
        self.unclosed('" quote')

    def skip_backticks(self, i: int, kind: str) -> int:
        while i < self.n:
            x = self.seq[i]
            if isinstance(x, int):
                self.refuse(x, kind)
            if x == "`":
                return i + 1
            i += 2 if x == "\\" else 1
        self.unclosed("` quote")

    def heredoc_word(self, i: int, heredocs: list[tuple[str, bool]]) -> int:
        """Read the delimiter after << (or <<-) at ``i``, quotes removed; past it."""
        strip = self.ch(i) == "-"
        i += strip
        while self.ch(i) in _BLANK and i < self.n:
            i += 1
        word: list[str] = []
        quote = ""
        while i < self.n:
            x = self.seq[i]
            if isinstance(x, int):
                self.refuse(x, "heredoc")
            if quote:
                if x == quote:
                    quote = ""
                else:
                    word.append(x)
            elif x in ("'", '"'):
                quote = x
            elif x == "\\":
                self.escaped(i)
                word.append(self.ch(i + 1))
                i += 1
            elif x in _WORD_END:
                break
            else:
                word.append(x)
            i += 1
        heredocs.append(("".join(word), strip))
        return i

    def heredoc_bodies(self, i: int, heredocs: list[tuple[str, bool]]) -> int:
        """Past the bodies of ``heredocs`` (which start at ``i``); placeholders in them refused."""
        for delimiter, strip in heredocs:
            while i < self.n:
                j = i
                while j < self.n and self.seq[j] != "\n":
                    if isinstance(self.seq[j], int):
                        self.refuse(int(self.seq[j]), "heredoc")
                    j += 1
                line = "".join(str(c) for c in self.seq[i:j])
                i = j + 1
                if (line.lstrip("\t") if strip else line) == delimiter:
                    break
        return min(i, self.n)


def _short(text: str, limit: int = 120) -> str:
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(shown)
