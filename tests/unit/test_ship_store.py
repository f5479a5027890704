"""The host's snapshot store (the helper's ``Store``), in process on real files: pieces checked
before a blob is published (their bytes a binary payload after the request line), a tree
appearing whole or not at all, manifests that would write outside the tree refused; the
controller's checks on ``snapshot`` replies; the ``sync`` key."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from dispatcher.errors import ConfigError, ProtocolViolationError
from dispatcher.remote import helper, protocol, wire
from tests.helper_harness import RawHelper
from tests.unit.test_hosts import load_text

DATA = b"print('v1')\n"
SHA = hashlib.sha256(DATA).hexdigest()


def put(store: helper.Store, *pieces: list[Any]) -> int:
    """``Store.put`` of pieces [sha, offset, bytes, last], each zlib-compressed."""
    items, parts = [], []
    for sha, offset, data, last in pieces:
        z = zlib.compress(data)
        items.append([sha, offset, len(z), last, "z"])
        parts.append(z)
    return store.put(items, b"".join(parts))


def manifest(*rows: list[Any]) -> tuple[bytes, str]:
    text = json.dumps({"version": 1, "files": list(rows)}, separators=(",", ":")) + "\n"
    return text.encode(), hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> helper.Store:
    s = helper.Store(str(tmp_path / "state"))
    s.ensure()
    return s


def test_a_blob_is_published_only_once_its_last_piece_checks(store: helper.Store) -> None:
    assert put(store, [SHA, 0, DATA[:5], False]) == 0
    assert not Path(store.blob(SHA)).exists()  # a part, not a blob
    assert put(store, [SHA, 5, DATA[5:], True]) == 1
    assert Path(store.blob(SHA)).read_bytes() == DATA
    assert Path(store.blob(SHA)).stat().st_mode & 0o777 == 0o444


def test_a_corrupted_blob_is_refused_and_never_published(store: helper.Store) -> None:
    with pytest.raises(helper.BadRequest, match="arrived corrupted"):
        put(store, [SHA, 0, b"print('v2')\n", True])
    assert not Path(store.blob(SHA)).exists()
    with pytest.raises(helper.BadRequest, match="send it again from 0"):
        put(store, [SHA, 7, DATA[7:], True])  # a piece past what arrived


def test_a_snapshot_appears_only_when_every_blob_is_there(store: helper.Store) -> None:
    data, snap = manifest(["src/a.py", "f", len(DATA), SHA], ["run.sh", "x", len(DATA), SHA])
    assert store.materialise(snap) == {"complete": False, "missing": [snap]}
    put(store, [snap, 0, data, True])
    assert store.materialise(snap) == {"complete": False, "missing": [SHA]}
    assert not Path(store.snapshot(snap)).exists()
    put(store, [SHA, 0, DATA, True])
    assert store.materialise(snap)["complete"] is True
    tree = Path(store.snapshot(snap))
    assert (tree / "src" / "a.py").read_bytes() == DATA
    assert (tree / "src").stat().st_mode & 0o777 == 0o555
    assert (tree / "run.sh").stat().st_mode & 0o777 == 0o555
    work = Path(store.workdir("t1-a1-x", snap))
    assert sorted(p.name for p in work.iterdir()) == ["run.sh", "src"]
    assert (work / "src").is_symlink() and (work / "src" / "a.py").read_bytes() == DATA


@pytest.mark.parametrize("path", ["../evil", "/etc/evil", "a/../../evil", "a//b", ""])
def test_a_manifest_path_out_of_the_tree_is_refused(store: helper.Store, path: str) -> None:
    data, snap = manifest([path, "f", len(DATA), SHA])
    put(store, [snap, 0, data, True], [SHA, 0, DATA, True])
    with pytest.raises(helper.BadRequest, match="bad manifest entry"):
        store.materialise(snap)


def test_a_launch_needs_its_snapshot_on_the_host(store: helper.Store) -> None:
    with pytest.raises(helper.BadRequest, match="is not on this host"):
        store.workdir("t1-a1-x", "0" * 64)


def reply(**extra: Any) -> dict[str, Any]:
    return {"ok": True, "complete": False, "missing": [SHA], "store": "ab" * 16, **extra}


@pytest.mark.parametrize(
    "bad",
    [{"complete": None}, {"missing": ["zz"]}, {"missing": "x"}, {"store": "../x"}, {"store": 1}],
)
def test_a_bad_snapshot_reply_is_a_violation(bad: dict[str, Any]) -> None:
    with pytest.raises(ProtocolViolationError, match="reply to 'snapshot'"):
        wire.check_reply("h", "snapshot", {}, reply(**bad))


def test_a_good_snapshot_reply_passes() -> None:
    got = wire.check_reply("h", "snapshot", {}, reply())
    assert got["missing"] == [SHA] and got["store"] == "ab" * 16


def test_sync_defaults_to_on_without_a_workdir(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[hosts.a]\n[hosts.b]\nworkdir = "~/exp"\n[hosts.c]\nworkdir = "~/exp"\nsync = true\n'
        "[hosts.d]\nsync = false\n[hosts.local]\n",
    )
    assert [h.sync for h in config.hosts] == [True, False, True, False, True]


def test_sync_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sync"):
        load_text(tmp_path, '[hosts.a]\nsync = "yes"\n')


def test_clean_up_spares_what_arrived_within_the_grace(store: helper.Store) -> None:
    put(store, [SHA, 0, DATA, True])  # named by no snapshot
    assert store.gc("q1", [], keep=0.0, grace=3600.0)["blobs"] == 0
    assert Path(store.blob(SHA)).exists()
    assert store.gc("q1", [], keep=0.0, grace=0.0)["blobs"] == 1
    assert not Path(store.blob(SHA)).exists()


def test_clean_up_keeps_another_queues_needs_and_kept_runs(store: helper.Store) -> None:
    data, snap = manifest(["a.py", "f", len(DATA), SHA])
    put(store, [snap, 0, data, True], [SHA, 0, DATA, True])
    store.materialise(snap)
    store.gc("other-queue", [snap], keep=0.0, grace=0.0)
    assert store.gc("q1", [], keep=0.0, grace=0.0) == {
        "runs": 0, "snapshots": 0, "blobs": 0, "bytes": 0
    }  # fmt: skip
    store.gc("other-queue", [], keep=0.0, grace=0.0)
    assert not Path(store.snapshot(snap)).exists() and not Path(store.blob(SHA)).exists()


def send_payload(raw: RawHelper, req: dict[str, Any], payload: bytes) -> dict[str, Any]:
    line = json.dumps(req).encode()
    assert raw.proc.stdin is not None
    raw.proc.stdin.write(b"%s%d %s\n%s" % (protocol.PAYLOAD_MARK, len(payload), line, payload))
    raw.proc.stdin.flush()
    reply = json.loads(raw.readline())
    assert isinstance(reply, dict)
    return reply


def test_put_bytes_travel_as_a_binary_payload_and_the_stream_stays_in_step(
    tmp_path: Path,
) -> None:
    raw = RawHelper(tmp_path / "state")
    data = bytes(range(256)) * 8192  # 2 MiB holding newlines: raw bytes, not a line
    sha = hashlib.sha256(data).hexdigest()
    req = {"id": 1, "op": "put", "blobs": [[sha, 0, len(data), True, "raw"]]}
    assert send_payload(raw, req, data) == {"id": 1, "ok": True, "stored": 1}
    assert raw.exchange(b'{"id": 2, "op": "ping"}') == {"id": 2, "ok": True}
    blob = tmp_path / "state" / "store" / "blobs" / sha[:2] / sha
    assert blob.read_bytes() == data
    # A payload over the cap is refused and its bytes skipped: the next request is answered.
    junk = b"\n" * (helper.MAX_REQUEST + 1)
    refused = send_payload(raw, {"id": 3, "op": "ping"}, junk)
    assert refused["ok"] is False and "payload over" in refused["error"]
    assert raw.exchange(b'{"id": 4, "op": "ping"}') == {"id": 4, "ok": True}
    # Sizes that do not add up to the payload are refused before anything is written.
    bad = {"id": 5, "op": "put", "blobs": [[SHA, 0, 3, True, "raw"]]}
    assert "do not add up" in send_payload(raw, bad, DATA)["error"]
    assert raw.close() == 0


def test_the_manifest_goes_with_a_question_and_the_last_put_materialises(tmp_path: Path) -> None:
    raw = RawHelper(tmp_path / "state")
    data, snap = manifest(["a.py", "f", len(DATA), SHA])
    ask = {"id": 1, "op": "snapshot", "snapshot": snap}
    got = send_payload(raw, ask, zlib.compress(data))
    assert got["ok"] and got["complete"] is False and got["missing"] == [SHA]
    put = {"id": 2, "op": "put", "blobs": [[SHA, 0, len(DATA), True, "raw"]], "snapshot": snap}
    got = send_payload(raw, put, DATA)
    assert got["ok"] and got["stored"] == 1 and got["complete"] is True
    assert (tmp_path / "state" / "store" / "snapshots" / snap / "a.py").read_bytes() == DATA
    checked = wire.check_reply("h", "put", put, got)
    assert checked["complete"] is True and checked["stored"] == 1
    wrong = {"id": 3, "op": "snapshot", "snapshot": "0" * 64}  # bytes that are not its manifest
    assert "arrived corrupted" in send_payload(raw, wrong, zlib.compress(data))["error"]
    assert raw.close() == 0


def test_many_blobs_are_published_together_once_on_disk(store: helper.Store) -> None:
    datas = [b"file %d\n" % n for n in range(helper.FSYNC_MAX + 4)]
    shas = [hashlib.sha256(d).hexdigest() for d in datas]
    items = [[sha, 0, len(d), True, "raw"] for sha, d in zip(shas, datas, strict=True)]
    assert store.put(items, b"".join(datas), flush=False) == len(datas)
    assert not any(Path(store.blob(sha)).exists() for sha in shas)  # checked, held back
    data, snap = manifest(*[[f"f{n}", "f", len(d), sha] for n, (d, sha) in enumerate(
        zip(datas, shas, strict=True))])  # fmt: skip
    put(store, [snap, 0, data, True])
    assert store.materialise(snap)["complete"] is True  # published first, then the tree
    assert all(Path(store.blob(sha)).read_bytes() == d for sha, d in zip(shas, datas, strict=True))
