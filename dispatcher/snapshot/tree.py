"""The project's files on disk: which directory is the project, what git says about it, and the
list of files a snapshot would hold (with their ``lstat``), odd files reported, never followed.

Reads the file system and runs git (each call under a timeout); writes nothing.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dispatcher.config.paths import snapshots_dir
from dispatcher.core.snapshot import ALWAYS_EXCLUDED, DEFAULT_EXCLUDES, Rules
from dispatcher.errors import SnapshotError

#: Seconds any one git command may take before ``queue add`` gives up with a clear error.
GIT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Candidate:
    """A file the snapshot holds, as ``lstat`` saw it."""

    path: str  # relative to the root, ``/``-separated
    mode: str  # "f", "x" or "l" (core.snapshot.MODES)
    size: int
    mtime_ns: int
    inode: int


@dataclass
class Listing:
    """The project's files and what was left out with a reason the user should hear."""

    root: Path
    git: bool
    keeps: Callable[[str], bool]  # whether a path (relative to root) belongs to the snapshot
    files: list[Candidate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def git(root: Path, *args: str) -> bytes | None:
    """git's stdout in ``root``, or None when git is missing or fails (not a work tree)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # reads must not take git's lock
        )
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        raise SnapshotError(
            f"`git {args[0]}` in {root} took over {GIT_TIMEOUT:.0f} s; set [sync] root to a"
            " smaller directory in hosts.toml, or check the repository"
        ) from None
    return done.stdout if done.returncode == 0 else None


def git_toplevel(directory: Path) -> Path | None:
    """The git work tree holding ``directory``, or None."""
    out = git(directory, "rev-parse", "--show-toplevel")
    return Path(os.fsdecode(out.rstrip(b"\n"))) if out else None


def git_state(root: Path, keeps: Callable[[str], bool]) -> tuple[str | None, bool | None]:
    """HEAD's commit (None before the first commit) and whether a file the snapshot holds (or
    held at HEAD: a deletion) differs from it, untracked files included; ``keeps`` says which
    paths (relative to ``root``) the snapshot holds."""
    head = git(root, "rev-parse", "--verify", "-q", "HEAD")
    prefix = git(root, "rev-parse", "--show-prefix")
    status = git(root, "status", "--porcelain", "-z", "--untracked-files=all", "--", ".")
    commit = head.decode().strip() if head else None
    if status is None or prefix is None:
        return commit, None
    start = len(os.fsdecode(prefix.rstrip(b"\n")))
    records = iter(status.split(b"\0"))
    dirty = False
    for record in records:
        if len(record) < 4:
            continue
        if record[:1] in (b"R", b"C"):
            next(records, None)  # a rename's source path follows; its new path tells
        dirty = dirty or keeps(os.fsdecode(record[3:])[start:])  # porcelain: from the repo root
    return commit, dirty


def _internal(root: Path, db_path: Path) -> Callable[[str], bool]:
    """Whether a path is the queue's own (its file, side files, logs, snapshot store, run
    records, copied outputs)."""
    try:
        rel = db_path.relative_to(root).as_posix()
    except ValueError:
        return lambda path: False
    stem = rel.removesuffix(db_path.suffix) if db_path.suffix else rel
    store = snapshots_dir(db_path).relative_to(db_path.parent).as_posix()
    parent = rel.rpartition("/")[0]
    own = (
        rel,
        f"{stem}.logs/",
        f"{stem}.runs/",
        f"{stem}.outputs/",
        f"{parent}/{store}/".lstrip("/"),
    )
    return lambda path: path.startswith(own)


def _walk(root: Path, rules: Rules, warnings: list[str]) -> Iterator[str]:
    """Every non-directory path under ``root``, not entering excluded directories nor following
    symlinks to directories."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            warnings.append(f"{rel_dir or '.'}: cannot be read ({err.strerror}), left out")
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                if not rules.prunes(rel):
                    stack.append(rel)
            else:
                yield rel


def _git_paths(root: Path) -> list[str]:
    out = git(root, "ls-files", "-co", "--exclude-standard", "-z")
    if out is None:
        raise SnapshotError(f"`git ls-files` failed in {root}; check the repository with git")
    return sorted({os.fsdecode(p) for p in out.split(b"\0") if p})


def _candidate(root: str, rel: str, warnings: list[str]) -> Candidate | None:
    try:
        st = os.lstat(f"{root}/{rel}")
    except FileNotFoundError:
        return None  # a tracked file deleted from the work tree: not part of the tree now
    except OSError as err:
        warnings.append(f"{rel}: cannot be read ({err.strerror}), left out")
        return None
    if stat.S_ISREG(st.st_mode):
        mode = "x" if st.st_mode & stat.S_IXUSR else "f"
        return Candidate(rel, mode, st.st_size, st.st_mtime_ns, st.st_ino)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(f"{root}/{rel}")
        inside = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
            warnings.append(f"{rel}: a symlink out of the project (to {target}), not followed")
            return None
        return Candidate(rel, "l", len(os.fsencode(target)), st.st_mtime_ns, st.st_ino)
    kind = "a directory (a git submodule?)" if stat.S_ISDIR(st.st_mode) else "not a regular file"
    warnings.append(f"{rel}: {kind}, left out")
    return None


def list_project(root: Path, rules: Rules, db_path: Path) -> Listing:
    """The files of the project at ``root``: git's tracked and untracked-but-not-ignored files
    in a git work tree, else every file less ``DEFAULT_EXCLUDES``; ``rules`` ([sync] include and
    exclude) then apply, and the queue's own files never belong."""
    if not root.is_dir():
        raise SnapshotError(f"the project directory {root} does not exist or is not a directory")
    in_git = git_toplevel(root) is not None
    rules = Rules(
        rules.include, (*(ALWAYS_EXCLUDED if in_git else DEFAULT_EXCLUDES), *rules.exclude)
    )
    internal = _internal(root, db_path)
    listing = Listing(root, in_git, lambda rel: not internal(rel) and rules.keeps(rel))
    paths = _git_paths(root) if in_git else _walk(root, rules, listing.warnings)
    where = os.fspath(root)
    for rel in paths:
        if not listing.keeps(rel):
            continue
        found = _candidate(where, rel, listing.warnings)
        if found is not None:
            listing.files.append(found)
    return listing
