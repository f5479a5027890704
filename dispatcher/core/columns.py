"""Naming the columns of ``labtasker results``: ``--columns`` and ``--sort`` resolved against the
columns a queue has (``id``, ``state``, ``args.lr``, ``result.val.loss``, ...). Pure: no I/O.

A name is a column's full name (any case), or a bare key (``lr``, ``val.loss``) when exactly one
``args.KEY``/``result.KEY`` column ends with it; otherwise the error lists the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dispatcher.errors import UsageError

#: The prefixes of the flattened key columns.
KEY_SOURCES = ("args", "result")


@dataclass(frozen=True)
class SortKey:
    """One ``--sort`` key: a resolved column name, descending when given as ``-NAME``."""

    column: str
    descending: bool = False


def split_list(text: str) -> list[str]:
    """``"a, b,c"`` as ``["a", "b", "c"]``; an empty item is refused."""
    items = [item.strip() for item in text.split(",")]
    if not items or any(not item for item in items):
        raise UsageError(f"empty name in {text!r}; give names separated by commas, e.g. id,args.lr")
    return items


def bare_key(column: str) -> str | None:
    """``lr`` for ``args.lr``, ``val.loss`` for ``result.val.loss``; None for other columns."""
    source, dot, key = column.partition(".")
    return key if dot and source in KEY_SOURCES and key else None


def resolve(name: str, columns: Sequence[str], option: str = "--columns") -> str:
    """The column ``name`` means among ``columns``; UsageError when none or several match."""
    exact = [c for c in columns if c.lower() == name.lower()]
    if len(exact) == 1:
        return exact[0]
    if exact:  # names differing only in case: the exact spelling decides
        same = [c for c in exact if c == name]
        if len(same) == 1:
            return same[0]
    keyed = [c for c in columns if (bare_key(c) or "").lower() == name.lower()]
    if not keyed:  # a nested key's last part: ``loss`` for result.val.loss
        keyed = [c for c in columns if (bare_key(c) or "").lower().endswith("." + name.lower())]
    if len(keyed) == 1:
        return keyed[0]
    if keyed:
        raise UsageError(
            f"{option}: {name!r} is ambiguous; it matches {', '.join(keyed)}; give one of them"
        )
    raise UsageError(f"{option}: no column {name!r}; the columns are {_listed(columns)}")


def _listed(columns: Sequence[str], most: int = 30) -> str:
    shown = ", ".join(columns[:most])
    return shown + (f" and {len(columns) - most} more" if len(columns) > most else "")


def pick(text: str, columns: Sequence[str]) -> list[str]:
    """The columns ``--columns TEXT`` names, in its order, each once."""
    out: list[str] = []
    for name in split_list(text):
        column = resolve(name, columns)
        if column not in out:
            out.append(column)
    return out


def sort_keys(text: str, columns: Sequence[str]) -> list[SortKey]:
    """``--sort result.acc,-args.lr``: ascending keys, descending with a leading ``-``."""
    keys = []
    for item in split_list(text):
        descending = item.startswith("-")
        name = item[1:].strip() if descending or item.startswith("+") else item
        if not name:
            raise UsageError(f"--sort: {item!r} names no column; e.g. --sort -result.acc")
        keys.append(SortKey(resolve(name, columns, "--sort"), descending))
    return keys


def table_order(columns: Sequence[str]) -> list[str]:
    """The table's default order: args, then result columns, then the rest as they come."""
    keyed = [c for c in columns if bare_key(c) is not None]
    args = [c for c in keyed if c.startswith("args.")]
    results = [c for c in keyed if c.startswith("result.")]
    return [*args, *results, *(c for c in columns if bare_key(c) is None)]
