"""Project snapshots, the pure part: the manifest (what a snapshot holds, and its id), which paths
belong to the project (include/exclude globs), and the size accounting behind the ``max_size``
guard. No files are read here: ``dispatcher.snapshot`` walks the tree and keeps the blobs.

A snapshot is content-addressed: its id is the sha256 of its manifest, and the manifest names
each file by the sha256 of its bytes, so identical trees give one id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Never part of a snapshot: the queue's own directory and git's.
ALWAYS_EXCLUDED = (".labtasker", ".git")
#: Left out of a project that is not a git work tree (git's ignore files decide otherwise).
DEFAULT_EXCLUDES = (*ALWAYS_EXCLUDED, "__pycache__", "*.pyc", ".venv", "venv", "node_modules")
MANIFEST_VERSION = 1
#: Entry modes: a regular file, an executable file, a symlink (its target text is the blob).
MODES = ("f", "x", "l")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Entry:
    """One file of a snapshot: its path (relative, ``/``-separated), mode, size and sha256."""

    path: str
    mode: str
    size: int
    digest: str


@dataclass(frozen=True)
class CodeRef:
    """Which code a task was queued with: the snapshot id, and git's commit and dirty flag."""

    snapshot: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None


#: No snapshot: tasks added without one (by the store directly, or before snapshots existed).
NO_CODE = CodeRef()


def digest(data: bytes) -> str:
    """The sha256 of ``data`` as 64 hex digits: the name of a blob or of a manifest."""
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(entries: Iterable[Entry]) -> bytes:
    """The canonical manifest text of ``entries``: sorted by path, so equal trees give equal
    bytes (and so one id). ASCII JSON, so undecodable file names survive as escapes."""
    rows = [[e.path, e.mode, e.size, e.digest] for e in sorted(entries, key=lambda e: e.path)]
    text = json.dumps({"version": MANIFEST_VERSION, "files": rows}, separators=(",", ":"))
    return (text + "\n").encode("ascii")


def parse_manifest(data: bytes) -> tuple[Entry, ...]:
    """The entries of a manifest written by ``manifest_bytes``; ValueError for anything else."""
    doc: Any = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
        raise ValueError("not a labtasker snapshot manifest (version 1)")
    entries = []
    for row in doc.get("files", ()):
        if not (
            isinstance(row, list)
            and len(row) == 4
            and isinstance(row[0], str)
            and row[1] in MODES
            and isinstance(row[2], int)
            and isinstance(row[3], str)
            and _HEX64.fullmatch(row[3])
        ):
            raise ValueError(f"bad manifest entry {row!r:.80}")
        entries.append(Entry(*row))
    return tuple(entries)


def is_snapshot_id(text: str) -> bool:
    """Whether ``text`` has the shape of a snapshot or blob id (64 lowercase hex digits)."""
    return bool(_HEX64.fullmatch(text))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay inside one path component, ``**`` spans any number, ``[...]`` is a
    class (``[!...]`` negated)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if pattern.startswith("**", i):
            out.append(".*")
            i += 1
        elif c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif end > 0:
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


@dataclass(frozen=True)
class _Glob:
    regex: re.Pattern[str]
    anchored: bool  # holds a `/`: matched against paths from the root, else against names
    dir_only: bool  # ends in `/`: matches directories only

    def matches(self, path: str) -> bool:
        """Whether this glob names ``path`` or one of the directories holding it."""
        parts = path.split("/")
        last = len(parts) - 1 if self.dir_only else len(parts)
        if self.anchored:
            return any(self.regex.match("/".join(parts[: k + 1])) for k in range(last))
        return any(self.regex.match(part) for part in parts[:last])


def compile_glob(pattern: str) -> _Glob:
    """A project glob: gitignore's shape (a name matches at any depth, a pattern with ``/`` from
    the project root, a trailing ``/`` only directories; a directory's match covers its files)."""
    dir_only = pattern.endswith("/")
    body = pattern.rstrip("/").removeprefix("./")
    return _Glob(_glob_regex(body), "/" in body, dir_only)


class Rules:
    """Which paths of the project a snapshot holds: those an ``include`` glob names (every path
    when there is none), less those an ``exclude`` glob names."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include, self.exclude = tuple(include), tuple(exclude)
        self._inc = tuple(compile_glob(p) for p in self.include)
        self._exc = tuple(compile_glob(p) for p in self.exclude)

    def keeps(self, path: str) -> bool:
        """Whether the file at ``path`` (relative, ``/``-separated) belongs to the snapshot."""
        if self._inc and not any(g.matches(path) for g in self._inc):
            return False
        return not any(g.matches(path) for g in self._exc)

    def prunes(self, directory: str) -> bool:
        """Whether no file under ``directory`` can belong (an exclude glob names it)."""
        return any(g.matches(directory + "/") for g in self._exc)


def format_size(n: int) -> str:
    """Bytes as a short binary size: ``512 B``, ``3.2 KiB``, ``41.0 MiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} B"
    value, units = float(n), ["KiB", "MiB", "GiB", "TiB"]
    while True:
        value /= 1024
        unit = units.pop(0)
        if value < 1024 or not units:
            return f"{value:.1f} {unit}"


def largest(files: Iterable[tuple[str, int]], n: int = 5) -> list[tuple[str, int]]:
    """The ``n`` largest (path, size) pairs, largest first, ties by path."""
    return sorted(files, key=lambda f: (-f[1], f[0]))[:n]


def oversize_message(
    root: str, files: Sequence[tuple[str, int]], max_size: int, exclude: Sequence[str]
) -> str:
    """The one-line refusal of a tree over ``max_size``: its size, its largest files, and the
    ``exclude`` line that brings it under the limit (the largest files, fewest first)."""
    total = sum(size for _, size in files)
    top = largest(files, 5)
    dropped, left = [], total
    for path, size in largest(files, len(files)):
        if left <= max_size:
            break
        dropped.append(path)
        left -= size
    shown = ", ".join(f"{p} ({format_size(s)})" for p, s in top)
    line = json.dumps([*exclude, *dropped[:10]], ensure_ascii=False)
    return (
        f"the project {root} is {format_size(total)} in {len(files)} files, over [sync] max_size"
        f" {format_size(max_size)}; largest: {shown}; leave them out with `exclude = {line}` in"
        " the [sync] table of hosts.toml, or raise max_size"
    )
