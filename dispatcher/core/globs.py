"""Output globs: the one rule for what a pattern of files to copy back may be, and how a task's
own values fill its placeholders. Pure: no I/O.

A glob names files inside the task's working directory: not empty, not absolute, no ``..``.
hosts.toml ``outputs``, ``queue add --outputs`` (and the API's ``outputs``) and the copy itself
all ask ``glob_problem``. A glob may hold ``%{key}`` (the task's args, as in command templates;
``%%`` is a literal ``%``), ``{task_id}`` and ``{run_id}``. Each value must be one safe path
component (not empty, not ``.`` or ``..``, no ``/``, ``\\`` or NUL): values are untrusted input
and never lead outside the working directory. They are matched literally (``*``, ``?`` and
``[`` in a value are escaped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dispatcher.core.template import MISSING, lookup, render_value, split
from dispatcher.errors import TemplateError, UsageError

#: The placeholders every task has, besides its args.
IDS = ("{task_id}", "{run_id}")


def glob_problem(pattern: Any, *, expanded: bool = False) -> str | None:
    """Why ``pattern`` may not be an output glob (None when it may); ``expanded``: its
    placeholders were filled already (``expand_glob``), so a ``%`` is just a character."""
    if not isinstance(pattern, str):
        return f"is a {type(pattern).__name__}, not a pattern"
    if not pattern.strip() or "\0" in pattern:
        return "is empty"
    if pattern.startswith(("/", "~")):
        return "is absolute; write it relative to the task's working directory"
    if ".." in pattern.replace("\\", "/").split("/"):
        return "contains `..`; outputs must stay inside the task's working directory"
    try:
        if not expanded:
            split(pattern)
    except TemplateError as err:
        return f"has a bad placeholder ({err})"
    return None


def has_placeholders(pattern: str) -> bool:
    """Whether ``pattern`` names its task: ``%{key}``, ``{task_id}`` or ``{run_id}``."""
    literals, keys = split(pattern)
    return bool(keys) or any(token in lit for lit in literals for token in IDS)


def expand_glob(pattern: str, args: Mapping[str, Any], task_id: int, run_id: str) -> str:
    """``pattern`` with the task's values in place of its placeholders; UsageError (naming the
    glob and the key) for a missing key or a value that is not one safe path component."""
    literals, keys = split(pattern)
    ids = {"{task_id}": str(task_id), "{run_id}": run_id}
    out: list[str] = []
    for k, literal in enumerate(literals):
        for token, value in ids.items():
            if token in literal:
                literal = literal.replace(token, _escaped(_component(pattern, token, value)))
        out.append(literal)
        if k < len(keys):
            value = lookup(args, keys[k], tuple(keys[k].split(".")))
            if value is MISSING:
                raise UsageError(f"output glob {pattern!r}: the task's args have no {keys[k]!r}")
            try:
                text = value if isinstance(value, str) else render_value(value)
            except TemplateError as err:
                raise UsageError(f"output glob {pattern!r}: {err}") from None
            out.append(_escaped(_component(pattern, f"%{{{keys[k]}}}", text)))
    return "".join(out)


def expand_all(
    patterns: Sequence[str], args: Mapping[str, Any], task_id: int, run_id: str
) -> tuple[list[str], list[str]]:
    """Every pattern expanded for one task, and what could not be (``"glob (why)"``)."""
    done: list[str] = []
    problems: list[str] = []
    for pattern in patterns:
        try:
            done.append(expand_glob(pattern, args, task_id, run_id))
        except (UsageError, TemplateError) as err:
            problems.append(str(err))
    return done, problems


def _component(pattern: str, what: str, text: str) -> str:
    if not text or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise UsageError(
            f"output glob {pattern!r}: {what} is {text!r}, which is not one safe path component"
            " (not empty, not . or .., no /, \\ or NUL)"
        )
    return text


def _escaped(text: str) -> str:
    # A value is matched as itself: each glob character becomes a one-character class.
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
