"""``labtasker queue``: typer's test runner for the many cases, the real entry point for a few."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher.cli import _register, app
from dispatcher.config.paths import dispatch_lock
from dispatcher.core.models import TaskState
from dispatcher.store.queue import Store

S = TaskState
REPO = Path(__file__).resolve().parents[2]
RO_USER = "labtasker-ro"
_register()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "q.duckdb"


def run(db: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", str(db), *args])


def ok(db: Path, *args: str) -> str:
    result = run(db, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return str(result.stdout)


def added(out: str) -> str:
    """The first line of ``queue add``'s output; the second tells the project snapshot."""
    first, snapshot = out.splitlines()
    assert snapshot.startswith("Snapshot "), out
    return first


def listed(db: Path) -> list[dict[str, Any]]:
    return list(json.loads(ok(db, "queue", "ls", "--json")))


def test_add_a_grid_and_list_it(db: Path) -> None:
    out = ok(db, "queue", "add", "--cmd", "train --lr %{lr} --seed %{seed}", "--grid",
             "lr=0.1,0.01", "--grid", "seed=1,2,3", "--name", "sweep", "--gpus", "1")  # fmt: skip
    assert added(out) == "Added 6 tasks (ids 1-6)."
    tasks = listed(db)
    assert [t["command"] for t in tasks[:2]] == [
        "train --lr 0.1 --seed 1",
        "train --lr 0.1 --seed 2",
    ]
    assert tasks[-1]["args"] == {"lr": 0.01, "seed": 3}
    assert {(t["name"], t["gpus_requested"], t["state"]) for t in tasks} == {
        ("sweep", 1, "pending")
    }


def test_a_timeout_is_a_duration_on_the_cli_in_a_sweep_file_and_in_the_api(
    db: Path, tmp_path: Path
) -> None:
    from dispatcher.api import Queue

    ok(db, "queue", "add", "--cmd", "a", "--timeout", "10m")
    ok(db, "queue", "add", "--cmd", "b", "--timeout", "90")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('command = "c"\ntimeout = "1h30m"\n')
    ok(db, "queue", "add", "--file", str(sweep))
    Queue(db).add("d", timeout="2h")
    assert [(t["command"], t["timeout"]) for t in listed(db)] == [
        ("a", 600.0), ("b", 90.0), ("c", 5400.0), ("d", 7200.0),
    ]  # fmt: skip


def test_gpu_needs_are_sizes_on_the_cli_in_a_sweep_file_and_in_the_api(
    db: Path, tmp_path: Path
) -> None:
    from dispatcher.api import Queue

    ok(db, "queue", "add", "--cmd", "a", "--gpu-memory", "10GiB", "--gpu-type", "A100|H100")
    ok(db, "queue", "add", "--cmd", "b", "--min-gpu-memory", "40G", "--gpus", "2")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('command = "c"\ngpu_memory = "512MiB"\n')
    ok(db, "queue", "add", "--file", str(sweep))
    Queue(db).add("d", gpu_memory=2**30, min_gpu_memory="1.5GiB")
    got = [(t["command"], t["gpu_memory"], t["gpu_type"], t["min_gpu_memory"]) for t in listed(db)]
    assert got == [
        ("a", 10 * 2**30, "A100|H100", None), ("b", None, None, 40 * 10**9),
        ("c", 512 * 2**20, None, None), ("d", 2**30, None, 3 * 2**29),
    ]  # fmt: skip
    for bad, message in [
        (["--gpus", "0", "--gpu-memory", "1GiB"], "--gpus 0 asks for a slot without a GPU"),
        (["--gpu-memory", "0"], "gpu memory must be a positive size"),
        (["--min-gpu-memory", "big"], "min gpu memory must be a positive size"),
        (["--gpu-type", "A100||H100"], "gpu type must be names like"),
    ]:
        result = run(db, "queue", "add", "--cmd", "x", *bad)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
    sweep.write_text('command = "c"\ngpu_memory = "lots"\n')
    result = run(db, "queue", "add", "--file", str(sweep))
    assert result.exit_code == 2 and "'gpu_memory' must be a positive size" in result.stderr
    assert len(listed(db)) == 4
    out = ok(db, "sql", "SELECT sum(gpu_memory) AS m, count(gpu_type) AS t FROM tasks", "-f", "csv")
    assert out.splitlines() == ["m,t", f"{11 * 2**30 + 512 * 2**20},1"]


def test_an_option_of_the_command_given_without_double_dash_gets_a_hint(db: Path) -> None:
    result = run(db, "queue", "add", "--grid", "lr=1", "python", "train.py", "--lr", "%{lr}")
    assert result.exit_code == 2
    assert "No such option: --lr" in result.stderr
    assert "If --lr belongs to your command, put the command after --" in result.stderr
    assert "-- python train.py --lr %{lr}" in result.stderr
    assert not db.exists()


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"labtasker-ssh {version('labtasker-ssh')}\n"


def test_words_after_double_dash_stay_words(db: Path) -> None:
    ok(db, "queue", "add", "--args", '{"out": "runs/a b", "lr": 0.1}', "--",
       "python", "train.py", "--out=%{out}/x y", "--lr", "%{lr}", "it's")  # fmt: skip
    (task,) = listed(db)
    assert shlex.split(task["command"]) == [
        "python", "train.py", "--out=runs/a b/x y", "--lr", "0.1", "it's"
    ]  # fmt: skip


def test_one_task_without_args_and_the_json_output(db: Path) -> None:
    assert added(ok(db, "queue", "add", "--cmd", "nvidia-smi")) == "Added 1 task (id 1)."
    assert json.loads(ok(db, "queue", "add", "--json", "--grid", "a=1,2", "--cmd", "x %{a}")) == [
        2,
        3,
    ]


def test_files_jsonl_and_toml_with_flags_overriding_the_file(db: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_text('{"a": 1}\n\n{"a": "two words"}\n')
    ok(db, "queue", "add", "--file", str(jsonl), "--cmd", "p %{a}")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'command = "t %{lr} %{m}"\nname = "s"\npriority = 3\ngpus = 2\n'
        '[grid]\nlr = [1, 2]\n[zip]\nm = ["x", "y"]\n'
    )
    assert added(ok(db, "queue", "add", "--file", str(sweep), "--priority", "9")) == (
        "Added 4 tasks (ids 3-6)."
    )
    tasks = listed(db)
    assert [t["command"] for t in tasks] == [
        "p 1",
        "p 'two words'",
        "t 1 x",
        "t 1 y",
        "t 2 x",
        "t 2 y",
    ]
    assert {(t["priority"], t["gpus_requested"], t["name"]) for t in tasks[2:]} == {(9, 2, "s")}


def test_dry_run_prints_commands_and_adds_nothing(db: Path) -> None:
    out = ok(db, "queue", "add", "--dry-run", "--grid", "a=1,x y", "--", "echo", "%{a}")
    assert out == "echo 1\necho 'x y'\n"
    assert not db.exists()


def test_duplicates_warn_and_can_be_skipped(db: Path) -> None:
    ok(db, "queue", "add", "--grid", "a=1,2", "--cmd", "x %{a}")
    result = run(db, "queue", "add", "--grid", "a=1,2,3", "--cmd", "x %{a}")
    assert added(result.stdout) == "Added 3 tasks (ids 3-5)."
    assert result.stderr == (
        "2 tasks duplicate existing ones (ids 3-4); use --skip-existing to skip them\n"
    )
    result = run(db, "queue", "add", "--grid", "a=1,4", "--cmd", "x %{a}", "--skip-existing")
    assert added(result.stdout) == "Added 1 task (id 6)."
    assert result.stderr == "Skipped 1 task already queued (same template and args).\n"


def test_ls_table_filters_and_footer(db: Path) -> None:
    Store(db).counts()  # a queue without tasks
    assert ok(db, "queue", "ls") == "The queue is empty; add tasks with `labtasker queue add`.\n"
    ok(db, "queue", "add", "--grid", "seed=1,2,3,4,5", "--cmd", "x %{seed}", "--name", "nm")
    Store(db).cancel([2])
    out = ok(db, "queue", "ls", "--limit", "3")
    lines = out.splitlines()
    assert lines[0].split() == ["id", "name", "state", "args", "age", "reason"]
    assert lines[1].split()[:4] == ["1", "nm", "pending", "seed=1"]
    assert lines[2].split()[-3:] == ["cancelled", "by", "user"]
    out = ok(db, "queue", "ls", "--state", "pending")
    assert out.splitlines()[0].split() == ["id", "name", "state", "args", "age"]  # no reasons
    assert lines[-1] == "… 2 more not shown (use --limit N, --state, or --json for all)"
    out = ok(db, "queue", "ls", "--state", "cancelled")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["2"]
    assert ok(db, "queue", "ls", "-s", "running") == "No tasks in state running.\n"
    assert [t["id"] for t in json.loads(ok(db, "queue", "ls", "--json", "--limit", "2"))] == [1, 2]


def _running(db: Path, task_id: int) -> None:
    with Store(db).transaction() as tx:
        tx.move(task_id, S.LAUNCHING, host="gpu-a", run_id=f"r{task_id}", gpu_ids=[0])
        tx.move(task_id, S.RUNNING, run_id=f"r{task_id}")


def test_cancel_tells_what_happens_to_running_tasks(db: Path) -> None:
    ok(db, "queue", "add", "--grid", "a=1,2,3,4", "--cmd", "x %{a}")
    _running(db, 3)
    _running(db, 4)
    assert ok(db, "queue", "cancel", "1", "2", "3") == (
        "Cancelled 2 pending tasks; asked the dispatcher to stop 1 running task (3); no dispatcher"
        " is running; the next `labtasker dispatch` stops them first.\n"
    )
    with dispatch_lock(db):
        out = ok(db, "queue", "cancel", "4")
    assert out == "asked the dispatcher to stop 1 running task (4).\n"
    assert [t["cancel_requested"] for t in listed(db)] == [False, False, True, True]


def test_retry_update_and_rm(db: Path) -> None:
    ok(db, "queue", "add", "--grid", "a=1,2,3", "--cmd", "x %{a}")
    Store(db).cancel([1, 2])
    assert ok(db, "queue", "retry", "--state", "cancelled") == (
        "Retrying 2 tasks (ids 1-2): back to pending.\n"
    )
    assert ok(db, "queue", "update", "1", "3", "--args", '{"a": 9}', "--priority", "4") == (
        "Updated 2 tasks (ids 1, 3).\n"
    )
    assert [(t["command"], t["priority"]) for t in listed(db)] == [
        ("x 9", 4),
        ("x 2", 0),
        ("x 9", 4),
    ]
    _running(db, 2)
    result = run(db, "queue", "rm", "2", "3")
    assert (result.exit_code, result.stderr) == (
        2,
        "Error: task 2 is running; cancel it first (`labtasker queue cancel ID`)\n",
    )
    assert ok(db, "queue", "rm", "3") == "Removed 1 task (id 3).\n"
    assert ok(db, "queue", "retry", "--failed") == "No tasks to retry.\n"


BAD_INPUTS = [
    (["queue", "add", "--args", "{lr: 1}", "--cmd", "x"], "--args '{lr: 1}': not valid JSON"),
    (["queue", "add", "--grid", "lr", "--cmd", "x"], "--grid 'lr': expected KEY=V1,V2"),
    (["queue", "add", "--cmd", "x %{lr}"], "task 1 of 1: template placeholder %{lr} has no"),
    (["queue", "add", "--cmd", "x %{lr"], "has no closing '}'"),
    (["queue", "add", "--cmd", "x", "--", "y"], "either --cmd TEXT or words after --"),
    (["queue", "add", "--grid", "a=1"], "no command given"),
    (["queue", "add", "--cmd", "x", "--after", "99"], "--after names task 99"),
    (["queue", "add", "--cmd", "x", "--file", "nope.jsonl"], "cannot read nope.jsonl"),
    (["queue", "add", "--cmd", "x", "--timeout", "-1"], "timeout must be a positive"),
    (["queue", "add", "--cmd", "x", "--timeout", "10x"], 'positive duration like 30, "30s"'),
    (["queue", "add", "--cmd", "x", "--grid", "lr=1,,2"], "--grid 'lr=1,,2': empty value"),
    (["queue", "add", "--cmd", "x", "--grid", "lr=1,"], "a grid value cannot be empty"),
    (["queue", "cancel", "1", "99"], "task 99 not in the queue"),
    (["queue", "cancel"], "name the tasks to cancel"),
    (["queue", "ls", "--state", "runing"], "unknown state 'runing'; valid states: pending"),
    (["queue", "update", "1"], "nothing to change"),
    (["queue", "update", "1", "--cmd", "y %{zz}"], "task 1: template placeholder %{zz}"),
    (["queue", "retry", "1"], "task 1 is pending; only failed, cancelled or lost"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    db: Path, args: list[str], message: str
) -> None:
    ok(db, "queue", "add", "--cmd", "first")
    before = listed(db)
    result = run(db, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert listed(db) == before


def test_a_file_that_is_not_a_queue_is_named_and_left_alone(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    result = run(notes, "queue", "add", "--cmd", "x")
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {notes} is not a labtasker queue (the file exists but is not a DuckDB"
        " database); move it away or choose another file with --db or LABTASKER_DB\n"
    )
    assert notes.read_text() == "my notes\n"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> Any:
    """The real entry point, as a user's shell runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args], capture_output=True, text=True, env=full_env,
        cwd=cwd, timeout=60,
    )  # fmt: skip


def test_end_to_end_through_the_entry_point(tmp_path: Path) -> None:
    added = cli("queue", "add", "--grid", "a=1,2", "--", "echo", "%{a}", cwd=tmp_path)
    assert (added.returncode, added.stderr) == (0, "")
    assert added.stdout.startswith("Added 2 tasks (ids 1-2).\nSnapshot ")
    queue_dir = tmp_path / ".labtasker"
    assert stat.S_IMODE(os.stat(queue_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(queue_dir / "queue.duckdb").st_mode) == 0o600
    env = {"LABTASKER_DB": str(queue_dir / "queue.duckdb")}
    listing = cli("queue", "ls", "--json", env=env)
    assert [t["command"] for t in json.loads(listing.stdout)] == ["echo 1", "echo 2"]
    bad = cli("queue", "cancel", "7", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("Error: task 7 not in the queue")


@pytest.fixture
def unprivileged() -> Iterator[list[str]]:
    """A command prefix that runs as an ordinary user.

    The user may read and search everywhere (CAP_DAC_READ_SEARCH, so it can reach this
    interpreter wherever it lives) but has no right to write what it does not own.
    """
    if os.geteuid() != 0:
        yield []  # already unprivileged
        return
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root privileges")
    try:
        pwd.getpwnam(RO_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RO_USER],
            check=True,
        )
    yield [
        "setpriv", f"--reuid={RO_USER}", f"--regid={RO_USER}", "--clear-groups",
        "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--",
    ]  # fmt: skip


@pytest.fixture
def locked() -> Iterator[Path]:
    """A directory everyone can read and search, but only root can write."""
    # Not under tmp_path: pytest makes that 0700, and the user must be able to look inside.
    with tempfile.TemporaryDirectory(prefix="labtasker-ro-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def test_a_read_only_directory_is_a_clear_error(locked: Path, unprivileged: list[str]) -> None:
    db = locked / "q.duckdb"
    # As root, the directory is root's and the command runs as another user; a suite run by an
    # ordinary user takes the write bit away from itself instead.
    read_only = 0o755 if unprivileged else 0o555

    def as_user(*args: str) -> Any:
        os.chmod(locked, read_only)
        try:
            return subprocess.run(
                [*unprivileged, sys.executable, "-m", "dispatcher", "--db", str(db), *args],
                capture_output=True, text=True, cwd=REPO, timeout=60,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
        finally:
            os.chmod(locked, 0o755)

    new = as_user("queue", "add", "--cmd", "x")
    assert new.returncode == 2 and "Traceback" not in new.stderr
    assert new.stderr.startswith(f"Error: cannot create the queue file {db}: Permission denied")
    assert os.listdir(locked) == []

    Store(db).counts()
    os.chmod(db, 0o666)  # the file is writable, its directory is not (no room for the WAL)
    existing = as_user("queue", "add", "--cmd", "x")
    assert existing.returncode == 2 and "Traceback" not in existing.stderr
    # The project snapshot is stored (beside the queue file) before the tasks are written.
    snapshots = locked / "q.snapshots"
    assert existing.stderr.startswith(f"Error: cannot create the snapshot store {snapshots}: ")
    assert Store(db).tasks() == []
    listing = as_user("queue", "ls").stdout  # reading still works
    assert listing == "The queue is empty; add tasks with `labtasker queue add`.\n"


def test_random_max_running_and_outputs_from_flags(db: Path) -> None:
    ok(db, "queue", "add", "--random", "lr=loguniform:1e-4,1e-2", "--random", "act=choice:a,b",
       "--samples", "3", "--seed", "5", "--grid", "d=1,2", "--max-running", "2",
       "--outputs", "out/*.json", "--outputs", "ckpt/last.pt",
       "--cmd", "train --lr %{lr} --act %{act} --d %{d}")  # fmt: skip
    tasks = listed(db)
    assert len(tasks) == 6 and [t["args"]["d"] for t in tasks] == [1, 1, 1, 2, 2, 2]
    assert [t["args"]["lr"] for t in tasks[:3]] == [t["args"]["lr"] for t in tasks[3:]]
    assert all(1e-4 <= t["args"]["lr"] <= 1e-2 and t["args"]["act"] in "ab" for t in tasks)
    assert {(t["max_running"], tuple(t["outputs"]), t["batch"]) for t in tasks} == {
        (2, ("out/*.json", "ckpt/last.pt"), tasks[0]["id"])
    }


def test_edited_random_sweep_resubmits_only_new_points(db: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "s.toml"
    body = 'command = "t %{lr} %{n}"\nname = "r"\nmax_running = 2\n[random]\nseed = 3\n'
    body += "lr = { uniform = [0, 1] }\nn = { randint = [1, 1000000] }\n"
    sweep.write_text(body + "samples = 4\n")
    preview = ok(db, "queue", "add", "--file", str(sweep), "--dry-run").splitlines()
    assert len(preview) == 4 and not db.exists()  # a preview creates no queue
    ok(db, "queue", "add", "--file", str(sweep))
    assert [t["command"] for t in listed(db)] == preview
    sweep.write_text(body + "samples = 6\n")
    out = ok(db, "queue", "add", "--file", str(sweep), "--skip-existing")
    assert out.startswith("Added 2 tasks (ids 5-6).")
    tasks = listed(db)
    assert [t["command"] for t in tasks[:4]] == preview and len({t["command"] for t in tasks}) == 6
    assert {(t["name"], t["max_running"]) for t in tasks} == {("r", 2)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--random", "lr=uniform:0,1"], "needs --samples N"),
        (["--samples", "3"], "--samples and --seed go with --random"),
        (["--random", "lr=uniform:1,0", "--samples", "2"], "uniform needs finite LOW <= HIGH"),
        (["--max-running", "0"], "max running must be at least 1"),
        (["--outputs", "/abs/*.json"], "output glob '/abs/\\*.json'"),
    ],
)
def test_bad_random_throttle_and_output_flags(db: Path, args: list[str], message: str) -> None:
    result = run(db, "queue", "add", *args, "--cmd", "x %{lr}")
    assert result.exit_code == 2
    assert message.replace("\\", "") in result.stderr
    assert not db.exists() or listed(db) == []
