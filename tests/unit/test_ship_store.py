"""The host's snapshot store (the helper's ``Store``), in process on real files: pieces checked
before a blob is published, a tree appearing whole or not at all, manifests that would write
outside the tree refused; the controller's checks on ``snapshot`` replies; the ``sync`` key."""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from dispatcher.errors import ConfigError, ProtocolViolationError
from dispatcher.remote import helper, wire
from tests.unit.test_hosts import load_text

DATA = b"print('v1')\n"
SHA = hashlib.sha256(DATA).hexdigest()


def piece(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode()


def manifest(*rows: list[Any]) -> tuple[bytes, str]:
    text = json.dumps({"version": 1, "files": list(rows)}, separators=(",", ":")) + "\n"
    return text.encode(), hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> helper.Store:
    s = helper.Store(str(tmp_path / "state"))
    s.ensure()
    return s


def test_a_blob_is_published_only_once_its_last_piece_checks(store: helper.Store) -> None:
    assert store.put([[SHA, 0, piece(DATA[:5]), False]]) == 0
    assert not Path(store.blob(SHA)).exists()  # a part, not a blob
    assert store.put([[SHA, 5, piece(DATA[5:]), True]]) == 1
    assert Path(store.blob(SHA)).read_bytes() == DATA
    assert Path(store.blob(SHA)).stat().st_mode & 0o777 == 0o444


def test_a_corrupted_blob_is_refused_and_never_published(store: helper.Store) -> None:
    with pytest.raises(helper.BadRequest, match="arrived corrupted"):
        store.put([[SHA, 0, piece(b"print('v2')\n"), True]])
    assert not Path(store.blob(SHA)).exists()
    with pytest.raises(helper.BadRequest, match="send it again from 0"):
        store.put([[SHA, 7, piece(DATA[7:]), True]])  # a piece past what arrived


def test_a_snapshot_appears_only_when_every_blob_is_there(store: helper.Store) -> None:
    data, snap = manifest(["src/a.py", "f", len(DATA), SHA], ["run.sh", "x", len(DATA), SHA])
    assert store.materialise(snap) == {"complete": False, "missing": [snap]}
    store.put([[snap, 0, piece(data), True]])
    assert store.materialise(snap) == {"complete": False, "missing": [SHA]}
    assert not Path(store.snapshot(snap)).exists()
    store.put([[SHA, 0, piece(DATA), True]])
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
    store.put([[snap, 0, piece(data), True], [SHA, 0, piece(DATA), True]])
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
    store.put([[SHA, 0, piece(DATA), True]])  # named by no snapshot
    assert store.gc("q1", [], keep=0.0, grace=3600.0)["blobs"] == 0
    assert Path(store.blob(SHA)).exists()
    assert store.gc("q1", [], keep=0.0, grace=0.0)["blobs"] == 1
    assert not Path(store.blob(SHA)).exists()


def test_clean_up_keeps_another_queues_needs_and_kept_runs(store: helper.Store) -> None:
    data, snap = manifest(["a.py", "f", len(DATA), SHA])
    store.put([[snap, 0, piece(data), True], [SHA, 0, piece(DATA), True]])
    store.materialise(snap)
    store.gc("other-queue", [snap], keep=0.0, grace=0.0)
    assert store.gc("q1", [], keep=0.0, grace=0.0) == {
        "runs": 0, "snapshots": 0, "blobs": 0, "bytes": 0
    }  # fmt: skip
    store.gc("other-queue", [], keep=0.0, grace=0.0)
    assert not Path(store.snapshot(snap)).exists() and not Path(store.blob(SHA)).exists()
