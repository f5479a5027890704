"""The laptop's snapshot store: file blobs by sha256, manifests by their sha256, the stat cache
that spares re-hashing unchanged files, the lock between ``queue add`` and clean-up, and the
clean-up itself.

Layout under the store directory (``config.paths.snapshots_dir``)::

    blobs/ab/abcdef...   one file's bytes (a symlink's target text), named by their sha256
    manifests/<id>       a snapshot's manifest (core.snapshot.manifest_bytes), named by its sha256
    cache/<root hash>    the stat cache of one project root (JSON)
    tmp/                 files being written; each is renamed into place when complete
    lock                 flock: shared while a snapshot is taken and its tasks added, exclusive
                         while clean-up runs

Every file is written to ``tmp/`` and renamed into place, blobs before the manifest naming
them, so a killed ``queue add`` never leaves a manifest that names a missing blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatcher.core.snapshot import Entry, digest, is_snapshot_id, parse_manifest
from dispatcher.errors import SnapshotError

_CHUNK = 1024 * 1024
#: (size, mtime_ns, inode) -> sha256 of a file, per path: git's index idea.
StatKey = tuple[int, int, int]


@dataclass(frozen=True)
class Collected:
    """What a clean-up removed."""

    manifests: int
    blobs: int
    bytes: int


class BlobStore:
    """The snapshot store in ``directory`` (created on first write, mode 0700)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._blobs = os.fspath(directory / "blobs")

    def _ensure(self) -> None:
        try:
            for sub in ("blobs", "manifests", "cache", "tmp"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise SnapshotError(
                f"cannot create the snapshot store {self.dir}: {err.strerror}; check that the"
                " queue's directory is writable"
            ) from None

    @contextlib.contextmanager
    def locked(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the store's lock: shared for taking snapshots, exclusive for clean-up."""
        self._ensure()
        with self._storing():
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def blob_path(self, name: str) -> Path:
        """Where the blob with sha256 ``name`` lives."""
        return Path(self._blobs, name[:2], name)

    def blob_file(self, name: str) -> str:
        """``blob_path`` as a string, made without Path objects (called once per blob sent)."""
        return f"{self._blobs}/{name[:2]}/{name}"

    def has_blob(self, name: str) -> bool:
        """Whether the blob with sha256 ``name`` is stored (one ``stat``, no Path objects:
        called for every file of a project at each ``queue add``)."""
        return os.path.exists(f"{self._blobs}/{name[:2]}/{name}")

    def manifest_path(self, snapshot: str) -> Path:
        """Where the manifest of ``snapshot`` lives."""
        return self.dir / "manifests" / snapshot

    def _publish(self, tmp: str, final: Path) -> None:
        """Rename a complete temporary file into place (its directory made on demand)."""
        try:
            os.replace(tmp, final)
        except FileNotFoundError:
            final.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(tmp, final)

    @contextlib.contextmanager
    def _storing(self) -> Iterator[None]:
        """The store's own OSErrors (full disk, no permission) as one SnapshotError: unlike a
        project file that cannot be read, they stop the add."""
        try:
            yield
        except OSError as err:
            raise SnapshotError(
                f"cannot write the snapshot store {self.dir}: {err.strerror or err}; check its"
                " disk space and permissions"
            ) from None

    def put_file(self, path: str) -> tuple[str, int, bool]:
        """Copy the file at ``path`` into the store; its sha256, size (of the bytes copied, so
        the blob always matches its name even if the file changes meanwhile) and whether the
        blob is new. OSError: ``path`` cannot be read; SnapshotError: the store cannot be
        written."""
        h, size = hashlib.sha256(), 0
        with open(path, "rb") as src:
            with self._storing():
                fd, tmp = tempfile.mkstemp(dir=self.dir / "tmp", prefix="w-")
            try:
                with self._storing():
                    dst = os.fdopen(fd, "wb")
                with contextlib.closing(dst):
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        with self._storing():
                            dst.write(chunk)
                    with self._storing():
                        dst.flush()
                name = h.hexdigest()
                new = not self.has_blob(name)
                with self._storing():
                    if new:
                        self._publish(tmp, self.blob_path(name))
                    else:
                        os.unlink(tmp)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return name, size, new

    def put_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store ``data`` as a blob (unless present); its sha256 and whether it is new."""
        name = digest(data)
        new = not self.has_blob(name)
        if new:
            self._write(self.blob_path(name), data)
        return name, new

    def _write(self, final: Path, data: bytes) -> None:
        with self._storing():
            fd, tmp = tempfile.mkstemp(dir=self.dir / "tmp", prefix="w-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                self._publish(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def put_manifest(self, data: bytes) -> tuple[str, bool]:
        """Store a manifest whose blobs are all stored already; its id, and whether it is new."""
        snapshot = digest(data)
        path = self.manifest_path(snapshot)
        if path.exists():
            return snapshot, False
        self._write(path, data)
        return snapshot, True

    def manifest(self, snapshot: str) -> tuple[Entry, ...]:
        """The entries of a stored snapshot."""
        return parse_manifest(self.manifest_path(snapshot).read_bytes())

    def snapshots(self) -> list[str]:
        """The ids of every stored manifest."""
        try:
            return sorted(p.name for p in (self.dir / "manifests").iterdir())
        except FileNotFoundError:
            return []

    def _cache_path(self, root: Path) -> Path:
        return self.dir / "cache" / digest(os.fsencode(root))[:32]

    def load_cache(self, root: Path) -> dict[str, tuple[StatKey, str]]:
        """The stat cache of ``root``: path -> ((size, mtime_ns, inode), sha256); {} if none."""
        try:
            doc: Any = json.loads(self._cache_path(root).read_bytes())
            return {p: ((s, m, i), h) for p, (s, m, i, h) in doc["files"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return {}  # missing or damaged: hashing again is always correct

    def save_cache(self, root: Path, entries: Iterable[tuple[str, StatKey, str]]) -> None:
        """Replace the stat cache of ``root``."""
        files = {p: [*key, h] for p, key, h in entries}
        text = json.dumps({"root": os.fsdecode(root), "files": files}, separators=(",", ":"))
        self._write(self._cache_path(root), text.encode("ascii", "backslashreplace"))

    def collect(self, keep: set[str]) -> Collected:
        """Remove manifests not in ``keep``, then blobs no kept manifest names, and leftover
        temporary files. The caller holds the exclusive lock. (The stat caches may still name
        removed blobs: a snapshot checks that a cached blob exists before trusting it.)"""
        manifests = [s for s in self.snapshots() if s not in keep]
        for snapshot in manifests:
            self.manifest_path(snapshot).unlink(missing_ok=True)
        used = {e.digest for s in self.snapshots() if is_snapshot_id(s) for e in self.manifest(s)}
        blobs, freed = 0, 0
        for sub in _children(self.dir / "blobs"):
            for blob in _children(sub):
                if blob.name not in used:
                    freed += blob.lstat().st_size
                    blob.unlink()
                    blobs += 1
        for stale in _children(self.dir / "tmp"):
            stale.unlink(missing_ok=True)
        return Collected(len(manifests), blobs, freed)


def _children(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []
