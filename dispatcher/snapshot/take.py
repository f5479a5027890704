"""Taking the project snapshot at ``queue add`` (and adding the tasks that record it), and
removing the snapshot data no task in the queue refers to.

A snapshot is taken and its tasks inserted under the store's shared lock; clean-up takes the
exclusive lock, so it never removes a snapshot whose tasks are still being added.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dispatcher.config.hosts import load_sync
from dispatcher.config.paths import project_dir, snapshots_dir
from dispatcher.config.sync import SyncSpec
from dispatcher.core.snapshot import CodeRef, Entry, Rules, manifest_bytes, oversize_message
from dispatcher.errors import SnapshotError
from dispatcher.snapshot.blobs import BlobStore, Collected, StatKey
from dispatcher.snapshot.tree import Candidate, git_state, git_toplevel, list_project

if TYPE_CHECKING:
    from dispatcher.core.batch import TaskBatch
    from dispatcher.store.add import AddResult
    from dispatcher.store.queue import Store

#: A file changed this recently may change again within the clock's tick unseen by its mtime:
#: it is hashed again next time rather than trusted from the stat cache (git's "racy" rule).
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class Taken:
    """A snapshot just taken: its reference for the tasks, and what to tell the user."""

    code: CodeRef
    root: Path
    files: int
    size: int
    new_blobs: int
    new: bool  # the manifest was not stored before (the tree differs from every earlier one)
    warnings: tuple[str, ...]


def default_hosts_path(db_path: Path) -> Path:
    """``hosts.toml`` in the current directory, else in the queue's project directory, as
    ``dispatch`` finds it (``config.hosts.load_hosts``)."""
    here = Path("hosts.toml")
    return here if here.exists() else project_dir(db_path) / "hosts.toml"


def project_root(db_path: Path, sync: SyncSpec, hosts_path: Path) -> Path:
    """The directory a snapshot holds: [sync] root (relative to the hosts file's directory),
    else the git work tree holding the queue, else the queue's project directory."""
    if sync.root is not None:
        root = Path(sync.root).expanduser()
        return Path(os.path.abspath(hosts_path.parent / root))
    base = project_dir(db_path)
    top = git_toplevel(base) if base.is_dir() else None
    return top if top is not None else base


class _Taker:
    """One snapshot's walk over the listed files, storing the blobs it lacks."""

    def __init__(self, blobs: BlobStore, root: Path) -> None:
        self.blobs, self.root = blobs, os.fspath(root)
        self.cache = blobs.load_cache(root)
        self.fresh: list[tuple[str, StatKey, str]] = []
        self.new_blobs = 0
        self.warnings: list[str] = []
        self.trust_before = time.time_ns() - _RACY_NS

    def entry(self, c: Candidate) -> Entry | None:
        """The manifest entry of ``c``, its blob stored; None (and a warning) if unreadable."""
        key = (c.size, c.mtime_ns, c.inode)
        cached = self.cache.get(c.path) if c.mode != "l" else None
        if cached and cached[0] == key and self.blobs.has_blob(cached[1]):
            name, size = cached[1], c.size
        else:
            try:
                name, size, new = self._store(c)
            except OSError as err:
                self.warnings.append(f"{c.path}: cannot be read ({err.strerror}), left out")
                return None
            self.new_blobs += new
        if c.mode != "l" and c.mtime_ns < self.trust_before and size == c.size:
            self.fresh.append((c.path, key, name))
        return Entry(c.path, c.mode, size, name)

    def _store(self, c: Candidate) -> tuple[str, int, bool]:
        path = f"{self.root}/{c.path}"
        if c.mode == "l":  # the link itself: its target's text is the blob
            target = os.fsencode(os.readlink(path))
            name, new = self.blobs.put_bytes(target)
            return name, len(target), new
        return self.blobs.put_file(path)


def take(db_path: Path, sync: SyncSpec, hosts_path: Path, blobs: BlobStore) -> Taken:
    """Snapshot the project of the queue at ``db_path`` into ``blobs`` (whose shared lock the
    caller holds). SnapshotError when the tree is over ``max_size``, before anything is read."""
    root = project_root(db_path, sync, hosts_path)
    listing = list_project(root, Rules(sync.include, sync.exclude), db_path)
    # The hosts file is the controller's, and may hold `env` values (secrets): never shipped.
    hosts_rel = os.path.relpath(os.path.abspath(hosts_path), root)
    listing.files = [c for c in listing.files if c.path != hosts_rel]
    sizes = [(c.path, c.size) for c in listing.files]
    if sum(s for _, s in sizes) > sync.max_size:
        raise SnapshotError(oversize_message(str(root), sizes, sync.max_size, sync.exclude))
    taker = _Taker(blobs, root)
    entries = [e for c in listing.files if (e := taker.entry(c)) is not None]
    snapshot, new = blobs.put_manifest(manifest_bytes(entries))  # after every blob it names
    if {p: (k, h) for p, k, h in taker.fresh} != taker.cache:
        blobs.save_cache(root, taker.fresh)
    commit, dirty = git_state(root, listing.keeps) if listing.git else (None, None)
    return Taken(
        code=CodeRef(snapshot, commit, dirty),
        root=root,
        files=len(entries),
        size=sum(e.size for e in entries),
        new_blobs=taker.new_blobs,
        new=new,
        warnings=(*listing.warnings, *taker.warnings),
    )


def add_with_snapshot(
    store: Store, batch: TaskBatch, *, hosts_path: Path | None, skip_existing: bool
) -> tuple[AddResult, Taken]:
    """Render ``batch``, snapshot the project, then add the tasks, each recording the snapshot.
    The snapshot's settings come from the [sync] table of ``hosts_path`` (default:
    ``default_hosts_path``; a missing file means the defaults). Errors come in this order, each
    before anything is written: the batch's, the hosts file's, the queue file's, the tree's."""
    from dispatcher.store.add import stage_batch

    staged = stage_batch(batch)
    try:
        hosts = hosts_path if hosts_path is not None else default_hosts_path(store.path)
        hosts = Path(os.path.abspath(hosts))
        sync = load_sync(hosts)
        with store.transaction():
            pass  # the queue file's own problems (read-only, locked, newer) before the snapshot's
        blobs = BlobStore(snapshots_dir(store.path))
        with blobs.locked(exclusive=False):
            taken = take(store.path, sync, hosts, blobs)
            result = store.add_staged(staged, skip_existing=skip_existing, code=taken.code)
    finally:
        staged.cleanup()
    return result, taken


def collect(store: Store) -> Collected:
    """Remove the snapshots no task in the queue refers to, and blobs no snapshot left uses."""
    blobs = BlobStore(snapshots_dir(store.path))
    if not blobs.dir.is_dir():
        return Collected(0, 0, 0)
    with blobs.locked(exclusive=True):
        return blobs.collect(store.snapshots())
