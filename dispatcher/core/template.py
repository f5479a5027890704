"""Command templates: ``%{key}`` placeholders whose values the shell reads back literally. No I/O.

Syntax: ``%{key}`` is replaced by the task's ``args[key]``; a dotted key (``%{model.depth}``)
reaches into nested objects; ``%%`` is a literal ``%``. A ``%`` followed by anything else is kept
as it is (``date +%Y`` needs no escaping), so only ``%{`` and ``%%`` are special. Each value is
quoted for where its placeholder sits (a bare word, inside '...' or "...", see
``template_shell``); a placeholder where no quoting is safe is refused when the template is parsed.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, Final

from dispatcher.core.template_shell import BARE, contexts, quote_for
from dispatcher.errors import TemplateError

# A valid key: dot-separated names, each made of anything but braces, dots, '%' and whitespace.
_KEY = re.compile(r"[^{}.%\s]+(?:\.[^{}.%\s]+)*")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: What ``lookup`` returns for a key the args lack.
MISSING: Final = _Missing()


def render_value(value: Any) -> str:
    """One argument value as the text of one shell word, before quoting.

    str as is; bool as ``true``/``false``; int and float as JSON numbers; None as the empty word;
    lists and objects as compact JSON. Anything else (bytes, dates, ...) is a TemplateError, and
    so is a string holding NUL, which no command-line word can hold.
    """
    cls = value.__class__
    # Exact-class checks first: this runs once per placeholder per task on the bulk-add path.
    if cls is str:
        if "\0" in value:
            raise TemplateError(
                f"value {value!r} contains a NUL character, which no command-line word can hold"
            )
        return value  # type: ignore[no-any-return]
    if cls is int:
        return int.__repr__(value)
    if cls is float and math.isfinite(value):
        return float.__repr__(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return render_value(str(value))
    if isinstance(value, int | float | list | tuple | dict):
        try:
            # JSON escapes NUL as \u0000, so no check is needed on this branch.
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as err:
            raise TemplateError(f"value {value!r} cannot be rendered as JSON: {err}") from None
    raise TemplateError(
        f"value {value!r} of type {cls.__name__} cannot be rendered; "
        "use a string, number, bool, null, list or object"
    )


def quote_value(value: Any, context: str = BARE) -> str:
    """``render_value`` written for a placeholder in ``context`` (by default a bare word)."""
    return quote_for(context, render_value(value))


class Template:
    """A parsed template: literal text alternating with placeholder keys. Parse once, render many.

    ``parts`` always has one more literal than ``keys``: ``lit0 key0 lit1 key1 ... litN``.
    """

    __slots__ = ("_paths", "contexts", "keys", "literals", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        literals, keys = split(text)
        self.literals: tuple[str, ...] = literals
        self.keys: tuple[str, ...] = keys
        #: Where each placeholder sits for the shell (template_shell.BARE, SINGLE or DOUBLE).
        self.contexts: tuple[str, ...] = contexts(literals, keys, text)
        self._paths: tuple[tuple[str, ...], ...] = tuple(tuple(k.split(".")) for k in keys)

    def placeholders(self) -> list[str]:
        """The distinct keys in order of first appearance."""
        return list(dict.fromkeys(self.keys))

    def render(self, args: Mapping[str, Any]) -> str:
        """The command for ``args``; TemplateError names a missing key or an unrenderable value."""
        lits = self.literals
        out = [lits[0]]
        for k, (key, path) in enumerate(zip(self.keys, self._paths, strict=True)):
            value = lookup(args, key, path)
            if value is MISSING:
                raise TemplateError(
                    f"template placeholder %{{{key}}} has no value in args "
                    f"{_short_json(args)}; add it with --args/--grid or remove it from the command"
                )
            try:
                out.append(quote_value(value, self.contexts[k]))
            except TemplateError as err:
                raise TemplateError(f"placeholder %{{{key}}}: {err}") from None
            out.append(lits[k + 1])
        return "".join(out)

    def quote(self, k: int, value: Any) -> str:
        """``value`` written for the ``k``-th placeholder; TemplateError names its key."""
        try:
            return quote_value(value, self.contexts[k])
        except TemplateError as err:
            raise TemplateError(f"placeholder %{{{self.keys[k]}}}: {err}") from None


def split(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``text`` as (literals, keys): ``lit0 key0 lit1 ... litN``; TemplateError when malformed."""
    literals: list[str] = []
    keys: list[str] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        j = text.find("%", i)
        if j < 0 or j == n - 1:
            buf.append(text[i:])
            break
        buf.append(text[i:j])
        nxt = text[j + 1]
        if nxt == "%":
            buf.append("%")
            i = j + 2
        elif nxt == "{":
            end = text.find("}", j + 2)
            if end < 0:
                raise TemplateError(
                    f"template {text!r}: '%{{' at column {j + 1} has no closing '}}'"
                    " (write %% for a literal %)"
                )
            key = text[j + 2 : end]
            if not _KEY.fullmatch(key):
                raise TemplateError(
                    f"template {text!r}: bad placeholder '%{{{key}}}' at column {j + 1};"
                    " a key is a name or dotted names like %{model.depth}"
                )
            literals.append("".join(buf))
            buf = []
            keys.append(key)
            i = end + 1
        else:
            buf.append("%")
            i = j + 1
    literals.append("".join(buf))
    return tuple(literals), tuple(keys)


def lookup(args: Mapping[str, Any], key: str, path: tuple[str, ...]) -> Any:
    """``args[key]`` if present, else the nested value at ``path`` (``key`` split at dots).

    Returns ``MISSING`` when neither exists.
    """
    value = args.get(key, MISSING)
    if value is not MISSING or len(path) == 1:
        return value
    node: Any = args
    for name in path:
        if not isinstance(node, Mapping) or name not in node:
            return MISSING
        node = node[name]
    return node


@lru_cache(maxsize=256)
def compile_template(text: str) -> Template:
    """Parse ``text`` once (cached); TemplateError on a malformed placeholder."""
    return Template(text)


def render(template: str, args: Mapping[str, Any]) -> str:
    """Render ``template`` with ``args``; the shell reads each value back exactly."""
    return compile_template(template).render(args)


def placeholders(template: str) -> list[str]:
    """The distinct placeholder keys of ``template`` in order of first appearance."""
    return compile_template(template).placeholders()


def escape_literal(text: str) -> str:
    """``text`` as template source that renders to itself (every ``%`` doubled)."""
    return text.replace("%", "%%")


def join_words(words: Iterable[str]) -> str:
    """Join argv words into a template, quoting literal text but keeping placeholders live.

    Like ``shlex.join``, except that ``%{key}`` stays outside the quotes, so that the rendered
    value (already one quoted word) joins the surrounding literal text into one word:
    ``["--out=%{dir}/a b"]`` becomes ``--out=%{dir}'/a b'``.
    """
    out: list[str] = []
    for word in words:
        literals, keys = split(word)
        if not keys:
            out.append(escape_literal(shlex.quote(literals[0])))
            continue
        pieces: list[str] = []
        for k, lit in enumerate(literals):
            if lit:
                pieces.append(escape_literal(shlex.quote(lit)))
            if k < len(keys):
                pieces.append("%{" + keys[k] + "}")
        out.append("".join(pieces))
    return " ".join(out)


def _short_json(args: Mapping[str, Any], limit: int = 200) -> str:
    try:
        text = json.dumps(args, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(args)
    return text if len(text) <= limit else text[: limit - 3] + "..."
