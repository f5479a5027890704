"""Output files copied back on the local file system: selection, links, the cap, the layout."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dispatcher.config.hosts import make_host
from dispatcher.core.globs import glob_problem
from dispatcher.errors import ConfigError
from dispatcher.transport.outputs import (
    describe,
    fetch_local,
    outputs_root,
    task_outputs_dir,
)


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_sits_beside_the_logs(tmp_path: Path) -> None:
    db = tmp_path / "queue.duckdb"
    assert outputs_root(db) == tmp_path / "queue.outputs"
    assert task_outputs_dir(db, 12) == tmp_path / "queue.outputs" / "12"


async def test_matching_files_and_directories_are_copied_privately(tmp_path: Path) -> None:
    work = tree(
        tmp_path / "work",
        {
            "out/a.json": b"{}",
            "out/b.txt": b"no",
            "ckpt/best.pt": b"x" * 100,
            "ckpt/sub/last.pt": b"y",
            "other.json": b"[]",
        },
    )
    dest = tmp_path / "q.outputs" / "3"
    got = await fetch_local(str(work), ["out/*.json", "ckpt", "missing/*"], dest)
    assert sorted(got.files) == ["ckpt/best.pt", "ckpt/sub/last.pt", "out/a.json"]
    assert got.skipped == [] and not got.over_limit and got.bytes == 103
    assert (dest / "ckpt" / "best.pt").read_bytes() == b"x" * 100
    assert not (dest / "out" / "b.txt").exists()
    for path in [dest, *dest.rglob("*")]:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert mode(tmp_path / "q.outputs") == 0o700


async def test_links_leading_out_of_the_workdir_are_not_followed(tmp_path: Path) -> None:
    secret = tree(tmp_path / "secret", {"key": b"s3cret"})
    work = tree(tmp_path / "work", {"out/ok.txt": b"ok"})
    os.symlink(secret / "key", work / "out" / "key.txt")
    os.symlink(secret, work / "out" / "dir")
    os.symlink(work / "out" / "ok.txt", work / "out" / "inner.txt")  # inside: fine
    dest = tmp_path / "dest"
    got = await fetch_local(str(work), ["out/*", "out/dir/*"], dest)
    assert sorted(got.files) == ["out/inner.txt", "out/ok.txt"]
    assert any("out/key.txt" in s and "outside the working directory" in s for s in got.skipped)
    assert not any(p.read_bytes() == b"s3cret" for p in dest.rglob("*") if p.is_file())


async def test_the_size_cap_leaves_files_out_and_says_so(tmp_path: Path) -> None:
    work = tree(tmp_path / "work", {"a.bin": b"a" * 600, "b.bin": b"b" * 600, "c.bin": b"c"})
    got = await fetch_local(str(work), ["*.bin"], tmp_path / "dest", max_bytes=1000)
    assert sorted(got.files) == ["a.bin", "c.bin"]
    assert got.over_limit
    line = describe(got, 1000)
    assert line is not None and "b.bin (600 bytes; over the size cap)" in line
    assert "raise outputs_max_size" in line


async def test_a_later_attempt_replaces_the_earlier_outputs(tmp_path: Path) -> None:
    work = tree(tmp_path / "work", {"r1.txt": b"1"})
    dest = tmp_path / "q.outputs" / "4"
    await fetch_local(str(work), ["*.txt"], dest)
    (work / "r1.txt").unlink()
    tree(work, {"r2.txt": b"2"})
    await fetch_local(str(work), ["*.txt"], dest)
    assert sorted(p.name for p in dest.iterdir()) == ["r2.txt"]
    assert [p.name for p in dest.parent.iterdir()] == ["4"]  # no temporary left behind


async def test_bad_patterns_and_a_missing_workdir_are_reported(tmp_path: Path) -> None:
    got = await fetch_local(str(tmp_path / "work"), ["*.json"], tmp_path / "dest")
    assert got.files == [] and "working directory unreadable" in got.skipped[0]
    (tmp_path / "work").mkdir()
    got = await fetch_local(str(tmp_path / "work"), ["../x", "/etc/passwd"], tmp_path / "dest")
    assert got.files == [] and len(got.skipped) == 2


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [("../x", "`..`"), ("a/../../x", "`..`"), ("/etc/*", "absolute"), ("~/x", "absolute"),
     ("", "empty"), ("out/*.json", None), ("**/*.pt", None)],
)  # fmt: skip
def test_glob_problems(pattern: str, problem: str | None) -> None:
    found = glob_problem(pattern)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_the_cap_is_a_host_setting() -> None:
    assert make_host("a").outputs_max_size == 1024**3
    assert make_host("a", {"outputs_max_size": "10MiB"}).outputs_max_size == 10 * 1024**2
    with pytest.raises(ConfigError, match="outputs_max_size"):
        make_host("a", {"outputs_max_size": "lots"})
