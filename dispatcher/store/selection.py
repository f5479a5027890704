"""The SQL of a results selection: which columns (``--columns``), in what order (``--sort``), which
rows (``--where``), built over the columns ``store.results`` finds. Builds strings; runs nothing.

The rows come from one relation ``r`` holding every results column under its flat name
(``"args.lr"``), plus ``args`` and ``result`` as STRUCTs and each bare name that means one key
alone (``lr``, ``val``, ``depth``): so a ``--where`` reads ``result.acc > 0.9``, ``acc > 0.9``,
``val.loss < 0.3`` or ``"result.acc" > 0.9`` alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dispatcher.core.columns import KEY_SOURCES, pick, resolve, sort_keys, table_order
from dispatcher.errors import UsageError


@dataclass(frozen=True)
class Column:
    """One output column: its name, the SQL expression over the ``tasks`` table and, for an
    ``args``/``result`` key, its path (``("result", "val", "loss")``)."""

    name: str
    sql: str
    is_json: bool = False
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selection:
    """What the user asked for: ``--columns``, ``--sort`` and ``--where`` as given (None: all
    columns, by id, every row); ``args_first`` orders the default columns as the table does."""

    columns: str | None = None
    sort: str | None = None
    where: str | None = None
    args_first: bool = False


@dataclass(frozen=True)
class Query:
    """The SELECT of the chosen rows and columns, and the one counting those rows."""

    rows: str
    count: str


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as a single-quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def chosen(cols: Sequence[Column], sel: Selection) -> list[Column]:
    """The columns ``sel`` shows, in its order."""
    by_name = {c.name: c for c in cols}
    names = [c.name for c in cols]
    if sel.columns is not None:
        wanted = pick(sel.columns, names)
    else:
        wanted = table_order(names) if sel.args_first else names
    return [by_name[n] for n in wanted]


def build(cols: Sequence[Column], source: str, sel: Selection) -> Query:
    """The queries of ``sel`` over ``cols`` read from ``source`` (``tasks WHERE ...``); the
    names in ``sel`` are resolved here (UsageError names a bad one)."""
    shown = chosen(cols, sel)
    keys = sort_keys(sel.sort, [c.name for c in cols]) if sel.sort else []
    inner = [f"{c.sql} AS {quote_ident(c.name)}" for c in cols] + _extras(cols)
    rel = f"WITH r AS (SELECT {', '.join(inner)} FROM {source})"
    where = f" WHERE ({sel.where})" if sel.where is not None else ""
    order = [f"{quote_ident(k.column)} {('ASC', 'DESC')[k.descending]} NULLS LAST" for k in keys]
    order.append(quote_ident("id"))
    listed = ", ".join(quote_ident(c.name) for c in shown)
    return Query(
        rows=f"{rel} SELECT {listed} FROM r{where} ORDER BY {', '.join(order)}",
        count=f"{rel} SELECT count(*) FROM r{where}",
    )


def _extras(cols: Sequence[Column]) -> list[str]:
    """``args`` and ``result`` as STRUCTs, and every bare name (``lr``, ``model.depth``,
    ``depth``, ``model``) that names one key alone, as ``--columns`` reads them."""
    trees: dict[str, dict[str, Any]] = {source: {} for source in KEY_SOURCES}
    for c in cols:
        if len(c.path) > 1 and c.path[0] in trees:
            _place(trees[c.path[0]], c.path[1:], c.sql)
    out = [f"{_struct(tree)} AS {quote_ident(source)}" for source, tree in trees.items()]
    names = [c.name for c in cols]
    taken = {n.lower() for n in names} | set(KEY_SOURCES)
    tops = [key.lower() for tree in trees.values() for key in tree]
    for tree in trees.values():  # objects, for ``val.loss``: a key no other top-level key shares
        for key, sub in tree.items():
            if isinstance(sub, dict) and tops.count(key.lower()) == 1 and key.lower() not in taken:
                out.append(f"{_struct(sub)} AS {quote_ident(key)}")
                taken.add(key.lower())
    by_name = {c.name: c for c in cols}
    for bare in dict.fromkeys(b for c in cols for b in _bare_names(c)):
        if bare.lower() in taken:
            continue
        with contextlib.suppress(UsageError):  # ambiguous or unknown: no alias
            out.append(f"{by_name[resolve(bare, names)].sql} AS {quote_ident(bare)}")
            taken.add(bare.lower())
    return out


def _bare_names(c: Column) -> list[str]:
    """The names without ``args.``/``result.`` that may mean column ``c``."""
    key = c.path[1:]
    return [".".join(key), key[-1]] if len(key) > 1 else list(key)


def _place(tree: dict[str, Any], path: Sequence[str], sql: str) -> None:
    """Put ``sql`` at ``path``; a key differing from a sibling only in case is left out (DuckDB
    names ignore case), reachable by its flat column name."""
    head, rest = path[0], path[1:]
    same = [k for k in tree if k.lower() == head.lower()]
    if same and (same[0] != head or not rest or isinstance(tree[head], str)):
        return
    if not rest:
        tree[head] = sql
        return
    _place(tree.setdefault(head, {}), rest, sql)


def _struct(tree: dict[str, Any]) -> str:
    if not tree:
        return "NULL"
    parts = [
        f"{quote_ident(k)} := {v if isinstance(v, str) else _struct(v)}" for k, v in tree.items()
    ]
    return f"struct_pack({', '.join(parts)})"
