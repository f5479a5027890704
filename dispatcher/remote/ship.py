"""Shipping a project snapshot to a host before its runs start (the controller's side).

The host keeps a content-addressed store (the helper's ``Store``). ``Shipper.ensure`` asks the
host for the snapshot (``snapshot``: complete, or the blobs it lacks, the manifest first; the
manifest goes with the next question), sends only those, in pieces (zlib level 1 where it pays)
packed many to a ``put`` request whose bytes travel as a binary payload below the helper's 4 MiB
cap, two requests in flight; the last ``put`` asks for the snapshot again (materialised once
every blob is there). Nothing here is resumed by bookkeeping: a
transfer cut by a dropped connection or a killed controller simply asks again, and blobs the
host already holds are not sent twice. Hosts that share one store (one NFS home) report the same
store id: one snapshot is shipped to such a store by one host at a time, so each blob crosses once
(the first ``snapshot`` request of each host is answered before that; it sends nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dispatcher.core.snapshot import Entry, parse_manifest
from dispatcher.core.words import plural
from dispatcher.errors import RemoteError, SnapshotError
from dispatcher.remote.wire import violation
from dispatcher.snapshot.blobs import BlobStore

if TYPE_CHECKING:
    from dispatcher.remote.session import HostSession

#: Raw bytes of one blob piece (each compressed on its own).
PIECE = 1024 * 1024
#: Payload bytes gathered into one ``put`` request (the helper refuses payloads over 4 MiB).
REQUEST_BUDGET = 3 * 1024 * 1024
#: ``put`` requests sent and not yet answered, at most.
IN_FLIGHT = 2
#: Bytes of a piece's start compressed to decide whether compressing it pays (kept small:
#: compressing random bytes is slow, and a project's files are small).
SAMPLE = 2048
#: Encoded pieces kept for the other hosts while a snapshot is being sent to several at once.
CACHE_BYTES = 256 * 1024 * 1024
#: A manifest up to this size goes with the first ``snapshot`` request (zlib-compressed).
INLINE_MANIFEST = 3 * 1024 * 1024
#: ``snapshot`` requests per ensure before giving up (each one is answered with what is missing).
ROUNDS = 50
#: Seconds one ``snapshot`` or ``put`` request may take (materialising a large tree, fsyncs).
CALL_TIMEOUT = 600.0


#: A piece of a blob as sent: offset, bytes on the wire, "z" (zlib) or "raw", last, raw size.
Piece = tuple[int, bytes, str, bool, int]


@dataclass
class Shipped:
    """What one ensure sent: the tree's files (the manifest not counted), the bytes of every
    blob sent (before compression), and the bytes on the wire (after)."""

    blobs: int = 0
    bytes: int = 0
    wire: int = 0


def run_workdir(session: HostSession, run_id: str) -> str:
    """The working directory of a shipped run on the host (the helper's ``cwd/<run_id>``)."""
    state = session.hello.get("state_dir")
    if not isinstance(state, str) or not state.startswith("/"):
        raise RemoteError(f"{session.name}: the helper gave no state_dir", host=session.name)
    return f"{state.rstrip('/')}/cwd/{run_id}"


class Shipper:
    """Sends snapshots from the laptop's store ``blobs`` to hosts (one per dispatch)."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._sends: dict[str, int] = {}  # snapshot -> sends of it finished (to any host)
        self._cache: dict[str, list[Piece]] = {}  # blob -> its pieces as sent
        self._cached = 0
        self._active = 0  # ensures in progress
        #: (host, boot id, helper pid) and a snapshot it reported complete. Only the clean-up
        #: removes snapshots, and never one that an unfinished task needs; a new helper (a
        #: reconnect) is asked again.
        self._complete: set[tuple[tuple[str, object, object], str]] = set()

    async def ensure(self, session: HostSession, snapshot: str) -> Shipped:
        """Make ``snapshot`` complete on the host; what was sent. SnapshotError when the
        laptop lacks it; RemoteError when the host will not take it; connection errors pass."""
        self._active += 1
        try:
            return await self._ensure(session, snapshot)
        finally:
            self._active -= 1
            if not self._active:  # pieces are kept only while some host is being sent to
                self._cache.clear()
                self._cached = 0

    async def _ensure(self, session: HostSession, snapshot: str) -> Shipped:
        helper = (session.name, session.hello.get("boot_id"), session.hello.get("pid"))
        if (helper, snapshot) in self._complete:  # this helper said so: no request per round
            return Shipped()
        sent = await self._ship(session, snapshot)
        self._complete.add((helper, snapshot))
        return sent

    async def _ship(self, session: HostSession, snapshot: str) -> Shipped:
        before = self._sends.get(snapshot, 0)
        reply = await session.call("snapshot", snapshot=snapshot, timeout=CALL_TIMEOUT)
        if reply["complete"]:
            return Shipped()
        # Hosts on one shared home report one store: one of them sends, the others then find
        # the snapshot complete (asked again if a send ended since their first answer).
        lock = self._locks.setdefault((reply["store"], snapshot), asyncio.Lock())
        async with lock:
            waited = self._sends.get(snapshot, 0) != before
            try:
                return await self._send_all(session, snapshot, reply, waited)
            finally:
                self._sends[snapshot] = self._sends.get(snapshot, 0) + 1

    async def _send_all(
        self, session: HostSession, snapshot: str, reply: dict[str, Any], waited: bool
    ) -> Shipped:
        """Send what the host's store lacks until it says ``snapshot`` is complete."""
        sent, allowed = Shipped(), {snapshot}
        for _ in range(ROUNDS):
            if waited:  # another host of this store may have sent it meanwhile
                reply = await session.call("snapshot", snapshot=snapshot, timeout=CALL_TIMEOUT)
                waited = False
            if reply["complete"]:
                return sent
            missing = reply["missing"]
            if not missing:
                break
            if missing == [snapshot]:  # the manifest: sent with the next question
                manifest = self._manifest_bytes(snapshot)
                if len(manifest) <= INLINE_MANIFEST:
                    inline = zlib.compress(manifest, 1)
                    reply = await session.call(
                        "snapshot", snapshot=snapshot, payload=inline, timeout=CALL_TIMEOUT
                    )
                    sent.wire += len(inline)
                    continue
            if snapshot not in missing and len(allowed) == 1:
                allowed |= {e.digest for e in self._manifest(snapshot)}
            if not set(missing) <= allowed:
                raise violation(session.name, "'snapshot' asked for blobs not in the snapshot")
            reply = await self._send(session, missing, sent, snapshot)
        raise RemoteError(
            f"{session.name}: snapshot {snapshot[:12]} is still incomplete after {ROUNDS} rounds;"
            " check the disk space under its state_dir",
            host=session.name,
        )

    def forget(self, session: HostSession, snapshot: str) -> None:
        """The host said ``snapshot`` is missing (a clean-up removed it): ask again next time."""
        helper = (session.name, session.hello.get("boot_id"), session.hello.get("pid"))
        self._complete.discard((helper, snapshot))

    def _manifest_bytes(self, snapshot: str) -> bytes:
        try:
            return self.blobs.manifest_path(snapshot).read_bytes()
        except OSError as err:
            raise SnapshotError(
                f"snapshot {snapshot[:12]} is not in {self.blobs.dir}: {err}"
            ) from None

    def _manifest(self, snapshot: str) -> tuple[Entry, ...]:
        try:
            return parse_manifest(self._manifest_bytes(snapshot))
        except ValueError as err:
            raise SnapshotError(
                f"snapshot {snapshot[:12]} is not in {self.blobs.dir}: {err}"
            ) from None

    def _encode(self, raw: bytes) -> tuple[bytes, str]:
        """A piece as sent, zlib-compressed (level 1) unless its first 2 KiB do not shrink
        (data that is compressed already or random: compressing costs CPU and saves nothing)."""
        sample = raw[:SAMPLE]
        if len(zlib.compress(sample, 1)) < 0.9 * len(sample):
            return zlib.compress(raw, 1), "z"
        return raw, "raw"

    async def _send(
        self, session: HostSession, names: list[str], sent: Shipped, snapshot: str
    ) -> dict[str, Any]:
        """Send blobs ``names`` (the manifest, stored apart on the laptop, is ``snapshot``) in
        ``put`` requests of at most ``REQUEST_BUDGET`` bytes of pieces; the last one asks for
        the snapshot too: its reply (``snapshot``'s) is returned."""
        batch: list[list[object]] = []
        parts: list[bytes] = []
        inflight: list[asyncio.Task[Any]] = []
        size = 0
        try:
            for name in names:
                for offset, data, enc, last, raw in self._pieces(name, snapshot):
                    if batch and size + len(data) > REQUEST_BUDGET:
                        await self._put(session, batch, parts, inflight, None)
                        batch, parts, size = [], [], 0
                    batch.append([name, offset, len(data), last, enc])
                    parts.append(data)
                    size += len(data)
                    sent.bytes += raw
                    sent.wire += len(data)
                sent.blobs += name != snapshot  # the manifest is not one of the tree's files
            await self._put(session, batch, parts, inflight, snapshot)
            replies = await asyncio.gather(*inflight)
            return dict(replies[-1])
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    def _pieces(self, name: str, snapshot: str) -> Iterator[Piece]:
        """Each ``PIECE`` of blob ``name`` as sent; remembered for the next hosts (up to
        ``CACHE_BYTES``): a blob is read and encoded once, whatever the number of hosts."""
        cached = self._cache.get(name)
        if cached is not None:
            yield from cached
            return
        blobs = self.blobs
        path = blobs.manifest_path(name) if name == snapshot else blobs.blob_file(name)
        try:
            f = open(path, "rb")  # noqa: SIM115 - read in pieces across awaits
        except OSError as err:
            raise SnapshotError(f"blob {name[:12]} is missing from {blobs.dir}: {err}") from None
        kept: list[Piece] | None = []  # None: too large to keep
        with contextlib.closing(f):
            offset = 0
            while True:
                raw = f.read(PIECE)
                piece = (offset, *self._encode(raw), len(raw) < PIECE, len(raw))
                if kept is not None:
                    kept.append(piece)
                    self._cached += len(piece[1])
                    if self._cached > CACHE_BYTES:
                        self._cached -= sum(len(p[1]) for p in kept)
                        kept = None
                yield piece
                if len(raw) < PIECE:
                    break
                offset += len(raw)
        if kept is not None:
            self._cache[name] = kept

    async def _put(
        self,
        session: HostSession,
        batch: list[list[object]],
        parts: list[bytes],
        inflight: list[asyncio.Task[Any]],
        snapshot: str | None,
    ) -> None:
        """Send one ``put`` (its pieces' bytes as the payload), keeping ``IN_FLIGHT`` at most
        unanswered: the host writes one request while the next is read and on its way."""
        while len(inflight) >= IN_FLIGHT:
            await inflight.pop(0)
        payload = b"".join(parts)
        extra = {"snapshot": snapshot} if snapshot else {}  # the last: then materialise it
        call = session.call("put", blobs=batch, payload=payload, timeout=CALL_TIMEOUT, **extra)
        inflight.append(asyncio.ensure_future(call))


#: Seconds that a snapshot, blob or partial blob which no queue names is kept after it arrived:
#: another dispatch may be sending it for tasks the clean-up could not know of.
GRACE = 3600.0


async def collect(
    call: Callable[..., Awaitable[dict[str, Any]]],
    queue_key: str,
    needed: set[str],
    keep: float,
    *,
    now: bool = False,
) -> dict[str, int]:
    """Clean the host's store: run directories ended over ``keep`` seconds ago (all ended ones
    when ``now``), then snapshots that neither ``needed`` (this queue's unfinished tasks'), nor
    another queue's last list, nor a kept run directory uses, then blobs no snapshot left names.
    ``call``: the host's helper call; ``queue_key``: the queue's fence key for this host (its
    list of needed snapshots on the host). What was removed: runs, snapshots, blobs, bytes."""
    reply = await call(
        "gc",
        queue=queue_key,
        needed=sorted(needed),
        keep=0.0 if now else keep,
        grace=0.0 if now else GRACE,
        timeout=CALL_TIMEOUT,
    )
    return {
        k: int(v)
        for k in ("runs", "snapshots", "blobs", "bytes")
        if isinstance(v := reply.get(k), int)
    }


def describe_collected(got: dict[str, int]) -> str:
    """What a clean-up removed, as one line."""
    runs, snapshots, blobs = got.get("runs", 0), got.get("snapshots", 0), got.get("blobs", 0)
    dirs = plural(runs, "ended run directory", "ended run directories")
    return (
        f"removed {dirs}, {plural(snapshots, 'snapshot')}, {plural(blobs, 'file')}"
        f" ({got.get('bytes', 0)} bytes)"
    )
