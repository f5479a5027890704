"""``queue add`` sweeps through the CLI: a task's identity (template plus args) for
``--skip-existing``, ``--dry-run`` and repeated points; ``--args`` combined with sweep points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from dispatcher.cli import _register, app
from dispatcher.store import schema
from dispatcher.store.queue import Store

REPO = Path(__file__).resolve().parents[2]
_register()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "q.duckdb"


def run(db: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", str(db), *args])


def ok(db: Path, *args: str) -> Any:
    result = run(db, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def tasks(db: Path) -> list[dict[str, Any]]:
    return list(json.loads(ok(db, "queue", "ls", "--json").stdout))


# -- identity: template plus args -----------------------------------------------------------------


def test_raising_samples_adds_the_new_points_when_the_command_does_not_show_them(
    db: Path, tmp_path: Path
) -> None:
    # The program reads its args from a file, say: every command is the same text.
    sweep = tmp_path / "s.toml"
    body = 'command = "python train.py"\n[random]\nlr = { loguniform = [1e-5, 1e-1] }\n'
    sweep.write_text(body + "samples = 2\n")
    assert ok(db, "queue", "add", "--file", str(sweep)).stdout.startswith(
        "Added 2 tasks (ids 1-2).\nSnapshot "
    )
    sweep.write_text(body + "samples = 3\n")
    result = ok(db, "queue", "add", "--file", str(sweep), "--skip-existing")
    assert result.stdout.startswith("Added 1 task (id 3).\nSnapshot ")
    assert result.stderr == "Skipped 2 tasks already queued (same template and args).\n"
    assert len({t["args"]["lr"] for t in tasks(db)}) == 3


def test_key_order_is_irrelevant_and_a_template_or_number_form_is_not(db: Path) -> None:
    ok(db, "queue", "add", "--args", '{"a": 1, "m": {"x": 1, "y": 2}}', "--cmd", "echo %{a}")
    same = ok(db, "queue", "add", "--args", '{"m": {"y": 2, "x": 1}, "a": 1}', "--cmd",
              "echo %{a}", "--skip-existing")  # fmt: skip
    assert same.stdout.startswith("Added 0 tasks.\nSnapshot ")
    # 1.0 is another value than 1 (the command gets `1.0`); another template is another task.
    other = ok(db, "queue", "add", "--args", '{"a": 1.0, "m": {"x": 1, "y": 2}}', "--cmd",
               "echo %{a}", "--skip-existing")  # fmt: skip
    assert other.stdout.startswith("Added 1 task (id 2).\nSnapshot ")
    assert ok(db, "queue", "add", "--cmd", "echo 1", "--skip-existing").stdout.startswith(
        "Added 1 task (id 3).\nSnapshot "
    )
    warned = ok(db, "queue", "add", "--args", '{"m": {"y": 2, "x": 1}, "a": 1}', "--cmd",
                "echo %{a}")  # fmt: skip
    assert warned.stdout.startswith("Added 1 task (id 4).\nSnapshot ")
    assert warned.stderr == (
        "1 task duplicates an existing one (id 4); use --skip-existing to skip them\n"
    )


def test_dry_run_honours_skip_existing_and_writes_nothing(db: Path) -> None:
    ok(db, "queue", "add", "--grid", "a=1,2", "--cmd", "echo %{a}")
    before = db.read_bytes()
    result = ok(db, "queue", "add", "--grid", "a=1,2,3", "--cmd", "echo %{a}", "--skip-existing",
                "--dry-run")  # fmt: skip
    assert result.stdout == "echo 3\n"
    assert result.stderr == (
        "Would skip 2 tasks already queued (same template and args as ids 1-2); would add 1.\n"
    )
    as_json = ok(db, "queue", "add", "--grid", "a=1,3", "--cmd", "echo %{a}", "--skip-existing",
                 "--dry-run", "--json")  # fmt: skip
    assert json.loads(as_json.stdout) == [{"args": {"a": 3}, "command": "echo 3"}]
    # Without --skip-existing a dry run shows every task that would be added.
    plain = ok(db, "queue", "add", "--grid", "a=1,3", "--cmd", "echo %{a}", "--dry-run")
    assert plain.stdout == "echo 1\necho 3\n"
    assert db.read_bytes() == before and len(tasks(db)) == 2


def test_repeated_points_in_one_add_are_dropped_and_said(db: Path, tmp_path: Path) -> None:
    result = ok(db, "queue", "add", "--grid", "a=1,2,1", "--grid", "b=x,x", "--cmd", "e %{a}")
    assert result.stdout.startswith("Added 2 tasks (ids 1-2).\nSnapshot ")
    assert result.stderr == (
        "4 duplicate points in this add were dropped (the same args as an earlier point); add a"
        " key such as repeat to run a point several times\n"
    )
    rows = tmp_path / "runs.jsonl"
    rows.write_text('{"a": 5}\n{"a": 5}\n{"a": 6}\n')
    preview = ok(db, "queue", "add", "--file", str(rows), "--cmd", "e %{a}", "--dry-run")
    assert preview.stdout == "e 5\ne 6\n"
    assert preview.stderr.startswith("1 duplicate point in this add would be dropped")
    assert [t["args"] for t in tasks(db)] == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]


def test_a_dry_run_without_a_queue_creates_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "dispatcher", "queue", "add", "--dry-run", "--skip-existing"]
    done = subprocess.run([*argv, "--grid", "a=1,1", "--", "echo", "%{a}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "echo 1\n"), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_queue_from_before_identities_is_migrated(db: Path) -> None:
    # A version-3 file, as the previous labtasker wrote it, holding one task.
    con = duckdb.connect(str(db))
    for step in schema.MIGRATIONS[:3]:
        for statement in step:
            con.execute(statement)
    con.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")
    con.execute(
        "INSERT INTO tasks (id, state, args, template, command, created_at, batch) VALUES"
        """ (1, 'pending', '{"z":0,"a":1}', 'e %{a}', 'e 1', now(), 1)"""
    )
    con.execute("UPDATE meta SET value = 2 WHERE key = 'next_id'")
    con.close()
    result = ok(db, "queue", "add", "--args", '{"a": 1, "z": 0}', "--args", '{"a": 1, "z": 1}',
                "--cmd", "e %{a}", "--skip-existing")  # fmt: skip
    assert result.stdout.startswith("Added 1 task (id 2).\nSnapshot ")
    assert Store(db).get(2).args == {"a": 1, "z": 1}


def test_update_keeps_the_identity_current(db: Path) -> None:
    ok(db, "queue", "add", "--args", '{"a": 1}', "--cmd", "e %{a}")
    ok(db, "queue", "update", "1", "--args", '{"a": 2}')
    result = ok(db, "queue", "add", "--grid", "a=1,2", "--cmd", "e %{a}", "--skip-existing")
    assert result.stdout.startswith("Added 1 task (id 2).\nSnapshot ")
    assert tasks(db)[1]["args"] == {"a": 1}


# -- --args with sweep points ---------------------------------------------------------------------


def test_args_go_into_every_grid_point(db: Path) -> None:
    result = ok(db, "queue", "add", "--args", '{"epochs": 10}', "--grid", "lr=1,2", "--",
                "python", "train.py", "--lr", "%{lr}", "--epochs", "%{epochs}")  # fmt: skip
    assert result.stdout.startswith("Added 2 tasks (ids 1-2).\nSnapshot ")
    assert [(t["args"], t["command"]) for t in tasks(db)] == [
        ({"epochs": 10, "lr": 1}, "python train.py --lr 1 --epochs 10"),
        ({"epochs": 10, "lr": 2}, "python train.py --lr 2 --epochs 10"),
    ]


def test_args_with_random_files_and_several_args(db: Path, tmp_path: Path) -> None:
    ok(db, "queue", "add", "--args", '{"m": {"w": 8}}', "--random", "x=randint:1,9",
       "--samples", "2", "--grid", "m.d=1", "--cmd", "e %{x} %{m.w} %{m.d}")  # fmt: skip
    assert [{k: v for k, v in t["args"].items() if k != "x"} for t in tasks(db)] == [
        {"m": {"w": 8, "d": 1}}, {"m": {"w": 8, "d": 1}},
    ]  # fmt: skip
    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "f %{a} %{b} %{c}"\n[args]\nb = 0\n[grid]\na = [1, 2]\n')
    out = ok(db, "queue", "add", "--file", str(sweep), "--args", '{"c": "x"}', "--args",
             '{"c": "y"}', "--dry-run")  # fmt: skip
    assert out.stdout == "f 1 0 x\nf 2 0 x\nf 1 0 y\nf 2 0 y\n"
    rows = tmp_path / "r.jsonl"
    rows.write_text('{"a": 1}\n{"a": 2}\n')
    out = ok(db, "queue", "add", "--file", str(rows), "--args", '{"b": 3}', "--cmd", "g %{a} %{b}",
             "--dry-run")  # fmt: skip
    assert out.stdout == "g 1 3\ng 2 3\n"
    # Without sweep points, each --args is one task, as before.
    out = ok(db, "queue", "add", "--args", '{"a": 1}', "--args", '{"a": 2}', "--cmd", "h %{a}",
             "--dry-run")  # fmt: skip
    assert out.stdout == "h 1\nh 2\n"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["--grid", "lr=1,2"], "lr"),
        (["--grid", "m.d=1,2"], "m.d"),
        (["--random", "lr=uniform:0,1", "--samples", "2"], "lr"),
        (["--file", "SWEEP"], "lr"),
        (["--file", "ROWS"], "lr"),
    ],
)
def test_a_key_in_args_and_in_the_points_is_refused(
    db: Path, tmp_path: Path, extra: list[str], key: str
) -> None:
    (tmp_path / "s.toml").write_text("[args]\nlr = 5\n[grid]\nx = [1]\n")
    (tmp_path / "r.jsonl").write_text('{"x": 1}\n{"lr": 1}\n')
    files = {"SWEEP": str(tmp_path / "s.toml"), "ROWS": str(tmp_path / "r.jsonl")}
    extra = [files.get(e, e) for e in extra]
    result = run(db, "queue", "add", "--args", '{"lr": 3, "m": {"d": 0}}', *extra, "--cmd", "e")
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: --args sets key {key!r}, which ")
    assert line.endswith("; give each key in one place")
    assert not db.exists()
