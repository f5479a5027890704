"""A task's identity, for duplicates: its command template plus its args. Pure: no I/O.

Two tasks are the same when their templates are the same text and their args are the same JSON
value: key order is irrelevant (at every depth), and a value is compared as JSON writes it, so
``1``, ``1.0`` and ``true`` are three different values (they render as three different words:
``1``, ``1.0``, ``true``). The canonical text is JSON with sorted keys and no spaces; the store
hashes ``template NUL canonical args`` (MD5, in SQL, ``IDENT_SQL``) into the ``ident`` column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_CANON = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
).encode

#: SQL for the identity of a row from its template and canonical args (both VARCHAR).
IDENT_SQL = "md5_number({template} || chr(0) || {canon})"


def canonical_args(args: Mapping[str, Any]) -> str:
    """The canonical JSON text of ``args``: sorted keys at every depth, compact."""
    return _CANON(args)


def canonical_member(key: str, value: Any) -> str:
    """One ``"key":value`` member of a canonical object (the object's members, sorted by key and
    joined by commas inside braces, are its canonical text)."""
    return _CANON(key) + ":" + _CANON(value)
