"""The project snapshot recorded at ``queue add``: real files, real git repositories made in
tmp dirs, the real CLI (typer's runner; a real process where one is killed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher.api import Queue
from dispatcher.cli import _register, app
from dispatcher.config.hosts import parse_hosts_text
from dispatcher.config.paths import snapshots_dir
from dispatcher.core.snapshot import Rules, digest, is_snapshot_id
from dispatcher.snapshot.blobs import BlobStore

REPO = Path(__file__).resolve().parents[2]
_register()


def run(db: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", str(db), *args])


def add(db: Path, *args: str) -> Any:
    result = run(db, "queue", "add", *args, "--", "python", "train.py")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def listed(db: Path) -> list[dict[str, Any]]:
    result = run(db, "queue", "ls", "--json")
    assert result.exit_code == 0, result.stderr
    return list(json.loads(result.stdout))


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def blobs_of(db: Path) -> BlobStore:
    return BlobStore(snapshots_dir(db))


def tree(db: Path, snapshot: str) -> dict[str, bytes]:
    """What a stored snapshot holds: path -> bytes, read back from its blobs."""
    store = blobs_of(db)
    return {e.path: store.blob_path(e.digest).read_bytes() for e in store.manifest(snapshot)}


def stored_files(db: Path) -> set[str]:
    root = snapshots_dir(db)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"lock"}


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project directory, also the current one (where a user runs labtasker)."""
    path = tmp_path / "proj"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


@pytest.fixture
def repo(proj: Path) -> Path:
    git(proj, "init", "-q")
    write(proj, {"train.py": "print('v1')\n", ".gitignore": "data/\n*.log\n"})
    git(proj, "add", "train.py")
    git(proj, "commit", "-qm", "first")
    return proj


def test_a_git_project_is_recorded_with_its_commit(repo: Path) -> None:
    write(repo, {"notes.txt": "untracked\n", "data/big.bin": "x" * 100, "run.log": "log\n"})
    db = repo / ".labtasker" / "queue.duckdb"
    out = add(db).stdout.splitlines()
    assert out[0] == "Added 1 task (id 1)." and out[1].startswith("Snapshot ")
    assert out[1].endswith(": 3 files, 34 B (3 new).")
    [task] = listed(db)
    assert is_snapshot_id(task["snapshot"]) and out[1].split()[1] == task["snapshot"][:12] + ":"
    assert task["git_commit"] == git(repo, "rev-parse", "HEAD") and task["git_dirty"] is True
    # Ignored files and the queue's own directory stay out; untracked ones are in.
    assert tree(db, task["snapshot"]) == {
        ".gitignore": b"data/\n*.log\n", "notes.txt": b"untracked\n", "train.py": b"print('v1')\n",
    }  # fmt: skip
    git(repo, "add", ".gitignore", "notes.txt")
    git(repo, "commit", "-qm", "all")
    add(db, "--name", "clean")
    clean = listed(db)[1]
    assert clean["snapshot"] == task["snapshot"]  # the same tree: the same snapshot
    assert (clean["git_commit"], clean["git_dirty"]) == (git(repo, "rev-parse", "HEAD"), False)
    results = run(db, "results", "--format", "json")
    assert results.exit_code == 0, results.stderr
    rows = json.loads(results.stdout)
    assert [r["snapshot"] for r in rows] == [task["snapshot"]] * 2
    assert [r["git_dirty"] for r in rows] == [True, False]


def test_an_edit_after_add_leaves_the_queued_snapshot_and_one_change_is_one_blob(
    repo: Path,
) -> None:
    write(repo, {f"lib/m{i}.py": f"x = {i}\n" for i in range(20)})
    db = repo / ".labtasker" / "queue.duckdb"
    add(db)
    first = listed(db)[0]["snapshot"]
    before = stored_files(db)
    write(repo, {"train.py": "print('v2')\n"})
    out = add(db).stdout
    assert out.splitlines()[1].endswith("(1 new).")
    second = listed(db)[1]["snapshot"]
    assert second != first
    assert tree(db, first)["train.py"] == b"print('v1')\n"  # the queued task keeps v1
    assert tree(db, second)["train.py"] == b"print('v2')\n"
    new = stored_files(db) - before - {n for n in stored_files(db) if n.startswith("cache/")}
    v2 = digest(b"print('v2')\n")
    assert new == {f"blobs/{v2[:2]}/{v2}", f"manifests/{second}"}
    again = stored_files(db)
    assert add(db).stdout.splitlines()[1].endswith("(unchanged).")
    assert listed(db)[2]["snapshot"] == second
    assert {n for n in stored_files(db) - again if not n.startswith("cache/")} == set()


def test_a_project_without_git_leaves_out_the_usual_clutter(proj: Path) -> None:
    write(proj, {
        "a.py": "a", "sub/c.txt": "c", "b.pyc": "b", "__pycache__/a.cpython-311.pyc": "p",
        ".venv/lib/x.py": "v", "venv/x": "v", "node_modules/m/index.js": "n",
        "sub/node_modules/y": "n", "sub/__pycache__/z.pyc": "z",
    })  # fmt: skip
    db = proj / ".labtasker" / "queue.duckdb"
    add(db)
    [task] = listed(db)
    assert tree(db, task["snapshot"]) == {"a.py": b"a", "sub/c.txt": b"c"}
    assert (task["git_commit"], task["git_dirty"]) == (None, None)


def test_a_queue_file_inside_the_project_is_not_part_of_it(proj: Path) -> None:
    write(proj, {"train.py": "t"})
    db = proj / "q.duckdb"
    add(db)
    add(db, "--name", "again")  # the queue file, its logs and its snapshots exist now
    first, second = listed(db)
    assert tree(db, second["snapshot"]) == {"train.py": b"t"}
    assert first["snapshot"] == second["snapshot"]


def test_sync_include_exclude_and_root(proj: Path) -> None:
    write(proj, {
        "src/model.py": "m", "src/ckpt/last.pt": "w", "src/util.py": "u", "run.sh": "r",
        "README.md": "doc", "other/x.py": "x",
        "hosts.toml": '[sync]\ninclude = ["src/", "run.sh"]\nexclude = ["ckpt/", "util.py"]\n'
                      'max_size = "1MiB"\nkeep = "3d"\n'
                      '[hosts.gpu1]\nsecret_env = ["NOT_SET_ANYWHERE"]\n',
    })  # fmt: skip
    db = proj / ".labtasker" / "queue.duckdb"
    add(db)  # hosts.toml in the project directory; only [sync] is read (no secret needed)
    assert tree(db, listed(db)[0]["snapshot"]) == {"src/model.py": b"m", "run.sh": b"r"}
    elsewhere = proj.parent / "elsewhere.toml"
    elsewhere.write_text('[sync]\nroot = "proj/src"\nexclude = ["*/last.pt"]\n')
    add(db, "--hosts", str(elsewhere))
    assert tree(db, listed(db)[1]["snapshot"]) == {"model.py": b"m", "util.py": b"u"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sync]\nmax_sise = 1\n", ":2: [sync]: unknown key 'max_sise'; did you mean `max_size`?"),
        ('\n[sync]\nexclude = "*.pt"\n', ":3: [sync]: `exclude` must be a list of glob patterns"),
        ('[sync]\nmax_size = "lots"\n', ":2: [sync]: `max_size` must be a byte count or a size"),
        ('[sync]\nkeep = "soon"\n', ":2: [sync]: `keep` must be a duration >= 0"),
        ('[sync]\ninclude = ["../up"]\n', ":2: [sync]: `include` must be a list of glob"),
        ("sync = 3\n", ":1: [sync]: must be a table, got 3"),
    ],
)
def test_a_bad_sync_table_is_one_error_naming_the_key(proj: Path, text: str, message: str) -> None:
    hosts = proj / "hosts.toml"
    hosts.write_text(text)
    db = proj / ".labtasker" / "queue.duckdb"
    result = run(db, "queue", "add", "--cmd", "x")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {hosts}{message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_hosts_file_reads_its_sync_table() -> None:
    text = '[sync]\nexclude = ["data/"]\nmax_size = "1GiB"\nkeep = "1d"\n[hosts.a]\n'
    sync = parse_hosts_text(text, Path("hosts.toml")).sync
    assert (sync.exclude, sync.max_size, sync.keep, sync.root) == (("data/",), 2**30, 86400, None)
    assert parse_hosts_text("[hosts.a]\n", Path("h")).sync.max_size == 200 * 2**20


@pytest.mark.parametrize(
    ("pattern", "kept", "left_out"),
    [
        ("*.ckpt", ["a.py", "ckpt.py"], ["m.ckpt", "deep/er/m.ckpt"]),
        ("data", ["database.py", "src/data.py/x"], ["data", "data/x", "src/data/y"]),
        ("data/", ["data", "src/data.py"], ["data/x", "src/data/y"]),
        ("src/*.py", ["src/sub/a.py", "a.py", "lib/src/a.py"], ["src/a.py"]),
        ("src/**/*.py", ["a.py", "src/a.txt"], ["src/a.py", "src/sub/deep/a.py"]),
        ("**/tmp", ["tmpx/a"], ["tmp/a", "a/b/tmp/c"]),
        ("run-[0-9]", ["run-x", "run-10"], ["run-3", "logs/run-7"]),
        ("run-[!0-9]", ["run-3"], ["run-x"]),
    ],
)
def test_exclude_globs_read_like_gitignore_lines(
    pattern: str, kept: list[str], left_out: list[str]
) -> None:
    rules = Rules(exclude=[pattern])
    assert [p for p in kept + left_out if rules.keeps(p)] == kept


def test_include_globs_keep_only_what_they_name() -> None:
    rules = Rules(include=["src/", "*.sh"], exclude=["src/gen/"])
    paths = ["src/a.py", "src/gen/b.py", "run.sh", "tools/x.sh", "README.md", "srcx/a.py"]
    assert [p for p in paths if rules.keeps(p)] == ["src/a.py", "run.sh", "tools/x.sh"]


def test_a_tree_over_max_size_is_refused_with_its_largest_files(proj: Path) -> None:
    write(proj, {
        "train.py": "t", "ckpt/model.pt": b"w" * 3000, "data.bin": b"d" * 2000,
        "hosts.toml": '[sync]\nmax_size = "1KiB"\nexclude = ["*.log"]\n',
    })  # fmt: skip
    db = proj / ".labtasker" / "queue.duckdb"
    result = run(db, "queue", "add", "--cmd", "python train.py")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    # hosts.toml is never part of the snapshot (its `env` may hold secrets)
    assert result.stderr.startswith(f"Error: the project {proj} is 4.9 KiB in 3 files, over")
    assert "largest: ckpt/model.pt (2.9 KiB), data.bin (2.0 KiB), train.py" in result.stderr
    assert 'exclude = ["*.log", "ckpt/model.pt", "data.bin"]' in result.stderr
    assert listed(db) == [] and stored_files(db) == set()  # refused before reading any file


def test_symlinks_out_of_the_tree_and_odd_files_are_reported_not_followed(proj: Path) -> None:
    write(proj, {"train.py": "t", "pkg/mod.py": "m"})
    (proj.parent / "secret.txt").write_text("outside")
    os.symlink("/etc/hostname", proj / "abs_link")
    os.symlink("../secret.txt", proj / "up_link")
    os.symlink("../train.py", proj / "pkg" / "in_link")
    os.symlink("pkg", proj / "dir_link")
    os.mkfifo(proj / "a_fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(proj / "a_socket"))
    odd = ["a_fifo", "a_socket"]
    if os.geteuid() == 0:
        os.mknod(proj / "a_device", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        odd.insert(1, "a_device")
    db = proj / ".labtasker" / "queue.duckdb"
    result = add(db)
    assert result.stderr.splitlines() == [
        *(f"snapshot: {name}: not a regular file, left out" for name in sorted(odd)),
        "snapshot: abs_link: a symlink out of the project (to /etc/hostname), not followed",
        "snapshot: up_link: a symlink out of the project (to ../secret.txt), not followed",
    ]
    store = blobs_of(db)
    entries = {e.path: e for e in store.manifest(listed(db)[0]["snapshot"])}
    assert sorted(entries) == ["dir_link", "pkg/in_link", "pkg/mod.py", "train.py"]
    assert (entries["pkg/in_link"].mode, entries["dir_link"].mode) == ("l", "l")
    assert store.blob_path(entries["pkg/in_link"].digest).read_bytes() == b"../train.py"


def test_unchanged_files_are_not_read_again(proj: Path) -> None:
    # The stat cache trusts (size, mtime_ns, inode): content changed behind an unchanged stat is
    # not seen, which shows the file was not read again (git's index behaves the same way).
    write(proj, {"train.py": "print('a')\n"})
    old = time.time_ns() - 3_600 * 10**9
    os.utime(proj / "train.py", ns=(old, old))
    db = proj / ".labtasker" / "queue.duckdb"
    add(db)
    with open(proj / "train.py", "r+b") as f:
        f.write(b"print('b')\n")
    os.utime(proj / "train.py", ns=(old, old))
    add(db)
    first, second = listed(db)
    assert first["snapshot"] == second["snapshot"]
    os.utime(proj / "train.py", ns=(old, old + 1))  # any stat change: read again
    add(db)
    assert tree(db, listed(db)[2]["snapshot"]) == {"train.py": b"print('b')\n"}


def test_a_failed_blob_write_leaves_no_manifest(proj: Path) -> None:
    write(proj, {"a.py": "a", "b.py": "b"})
    db = proj / ".labtasker" / "queue.duckdb"
    blocked = snapshots_dir(db) / "blobs" / digest(b"b")[:2]
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")  # publishing b.py's blob fails
    result = run(db, "queue", "add", "--cmd", "python a.py")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: cannot write the snapshot store {snapshots_dir(db)}")
    assert listed(db) == []
    assert not (snapshots_dir(db) / "manifests").exists() or not any(
        (snapshots_dir(db) / "manifests").iterdir()
    )
    blocked.unlink()
    add(db)
    assert tree(db, listed(db)[0]["snapshot"]) == {"a.py": b"a", "b.py": b"b"}


def test_a_killed_add_never_leaves_a_manifest_naming_a_missing_blob(proj: Path) -> None:
    db = proj / ".labtasker" / "queue.duckdb"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    store = blobs_of(db)
    killed = 0
    for attempt in range(20):
        write(proj, {f"big{attempt}.bin": os.urandom(20 * 2**20), "train.py": str(attempt)})
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "--db", str(db), "queue", "add", "--cmd", "x"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        tmp = snapshots_dir(db) / "tmp"
        left = set(tmp.iterdir()) if tmp.is_dir() else set()  # by an add killed before
        while proc.poll() is None and not (tmp.is_dir() and set(tmp.iterdir()) - left):
            time.sleep(0.001)  # polling for this add's first blob being written
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        (proj / f"big{attempt}.bin").unlink()
        if killed >= 2:
            break
    assert killed >= 1
    for snapshot in store.snapshots():
        for entry in store.manifest(snapshot):
            assert digest(store.blob_path(entry.digest).read_bytes()) == entry.digest
    for blob in (snapshots_dir(db) / "blobs").rglob("*"):
        assert blob.is_dir() or digest(blob.read_bytes()) == blob.name  # complete or absent
    assert all(t["snapshot"] in store.snapshots() for t in listed(db))


def test_queue_rm_removes_snapshot_data_no_task_refers_to(proj: Path) -> None:
    write(proj, {"train.py": "v1", "lib.py": "shared"})
    db = proj / ".labtasker" / "queue.duckdb"
    add(db)
    write(proj, {"train.py": "v2"})
    add(db)
    add(db, "--name", "same-tree")
    one, two, three = (t["snapshot"] for t in listed(db))
    store = blobs_of(db)
    assert sorted(store.snapshots()) == sorted({one, two}) and two == three
    (snapshots_dir(db) / "tmp" / "w-left-by-a-killed-add").write_bytes(b"partial")
    removed = run(db, "queue", "rm", "1")
    assert removed.stdout == (
        "Removed 1 task (id 1).\nRemoved 1 snapshot no task uses (2 B freed).\n"
    )
    assert store.snapshots() == [two]
    assert not store.blob_path(digest(b"v1")).exists()
    assert store.blob_path(digest(b"shared")).exists() and store.blob_path(digest(b"v2")).exists()
    assert list((snapshots_dir(db) / "tmp").iterdir()) == []
    assert run(db, "queue", "rm", "2").stdout == "Removed 1 task (id 2).\n"  # 3 still uses it
    assert store.snapshots() == [two]
    run(db, "queue", "rm", "3")
    assert store.snapshots() == []
    assert {p for p in stored_files(db) if not p.startswith("cache/")} == set()


def test_the_api_records_a_snapshot_too(proj: Path) -> None:
    write(proj, {"train.py": "t", "skip.me": "s", "h.toml": '[sync]\nexclude = ["*.me"]\n'})
    db = proj / ".labtasker" / "queue.duckdb"
    q = Queue(db)
    [task_id] = q.add("python train.py", hosts=proj / "h.toml")
    [task] = q.tasks(ids=[task_id])
    assert tree(db, task["snapshot"]) == {"train.py": b"t"}  # the hosts file read: never in it


def test_git_dirty_counts_only_files_the_snapshot_holds(repo: Path) -> None:
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore")
    db = repo / ".labtasker" / "queue.duckdb"  # untracked, not ignored: still not "dirty"
    write(repo, {"run.log": "ignored\n", "hosts.toml": '[sync]\nexclude = ["scratch/"]\n'})
    git(repo, "add", "hosts.toml")
    git(repo, "commit", "-qm", "hosts")
    write(repo, {"scratch/notes.txt": "excluded by [sync]\n"})
    add(db)
    assert listed(db)[-1]["git_dirty"] is False
    (repo / "train.py").unlink()  # a deleted tracked file is a change
    add(db)
    assert listed(db)[-1]["git_dirty"] is True
    assert "train.py" not in tree(db, listed(db)[-1]["snapshot"])


def test_from_a_subdirectory_the_projects_hosts_file_shapes_the_snapshot(
    proj: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(proj, {"src/a.py": "a", "big.ckpt": "w", "hosts.toml": '[sync]\nexclude = ["*.ckpt"]\n'})
    db = proj / ".labtasker" / "queue.duckdb"
    add(db)
    monkeypatch.chdir(proj / "src")  # no hosts.toml here: the project's is read
    result = CliRunner().invoke(app, ["queue", "add", "--cmd", "python a.py"])
    assert result.exit_code == 0, result.stderr
    first, second = (t["snapshot"] for t in listed(db))
    assert first == second and "big.ckpt" not in tree(db, second)


def test_queue_show_names_the_code_a_task_was_queued_with(repo: Path) -> None:
    db = repo / ".labtasker" / "queue.duckdb"
    add(db)
    task = listed(db)[0]
    shown = run(db, "queue", "show", "1")
    assert shown.exit_code == 0, shown.stderr
    commit = task["git_commit"][:12]
    assert f"code      snapshot {task['snapshot'][:12]} · git {commit} (dirty)" in shown.stdout
    as_json = json.loads(run(db, "queue", "show", "1", "--json").stdout)
    assert [as_json[k] for k in ("snapshot", "git_commit", "git_dirty")] == [
        task["snapshot"], task["git_commit"], True,
    ]  # fmt: skip
