"""Output globs with placeholders: ``%{key}``, ``{task_id}``, ``{run_id}`` filled per task, values
refused unless one safe path component, the add-time checks and warning through the CLI, and a
real copy on the ``local`` host matching each task's own files only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher.cli import _register, app
from dispatcher.core.globs import expand_all, expand_glob, glob_problem, has_placeholders
from dispatcher.errors import UsageError
from dispatcher.transport.outputs import fetch_local

_register()


def run(db: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", str(db), *args])


def test_placeholders_are_filled_and_values_matched_literally() -> None:
    args = {"lr": 0.1, "m": {"name": "a*b?[c]"}, "tag": "50%"}
    pattern = "out/%{lr}/%{m.name}-%{tag}/{task_id}/{run_id}/%%*.json"
    assert expand_glob(pattern, args, 7, "r-1") == "out/0.1/a[*]b[?][[]c]-50%/7/r-1/%*.json"
    assert has_placeholders("out/{task_id}/*") and has_placeholders("out/%{lr}/*")
    assert not has_placeholders("out/*/metrics.json") and not has_placeholders("a/%%{x}")


@pytest.mark.parametrize("value", ["a/b", "..", ".", "", "a\\b", None, "x\0y"])
def test_a_value_that_is_not_one_safe_path_component_is_refused(value: Any) -> None:
    with pytest.raises(UsageError, match="not one safe path component"):
        expand_glob("out/%{v}/*.json", {"v": value}, 1, "r")
    done, problems = expand_all(["ok/*", "out/%{v}/x", "out/%{w}/x"], {"v": value}, 1, "r")
    assert done == ["ok/*"] and "'v'" not in problems[0] and "no 'w'" in problems[1]


def test_a_bad_placeholder_is_a_glob_problem() -> None:
    assert "bad placeholder" in (glob_problem("out/%{lr/x") or "")
    assert "bad placeholder" in (glob_problem("out/%{}/x") or "")
    assert glob_problem("out/%{lr}/{task_id}/*.json") is None


async def test_each_task_copies_only_its_own_files_from_a_shared_workdir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for lr in ("0.1", "0.01"):
        (work / "out" / lr).mkdir(parents=True)
        (work / "out" / lr / "metrics.json").write_text(json.dumps({"lr": lr}))
    for task_id, value in ((1, 0.1), (2, 0.01)):
        lr = str(value)
        globs, problems = expand_all(["out/%{lr}/metrics.json"], {"lr": value}, task_id, "r")
        got = await fetch_local(str(work), globs, tmp_path / "dest" / str(task_id))
        assert (got.files, problems) == ([f"out/{lr}/metrics.json"], [])
    # Glob characters in a value match only themselves.
    for name in ("a*", "ab", "a?"):
        (work / name).write_text(name)
    globs, _ = expand_all(["%{n}"], {"n": "a*"}, 3, "r")
    got = await fetch_local(str(work), globs, tmp_path / "dest" / "3")
    assert got.files == ["a*"]


def test_add_refuses_unsafe_values_and_missing_keys(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    for grid, message in (
        ("lr=0.1,a/b", "task 2 of 2: output glob 'out/%{lr}/m.json': %{lr} is 'a/b'"),
        ("lr=..,1", "task 1 of 2: output glob 'out/%{lr}/m.json': %{lr} is '..'"),
        ("x=1", "the task's args have no 'lr'"),
    ):
        result = run(db, "queue", "add", "--grid", grid, "--outputs", "out/%{lr}/m.json",
                     "--cmd", "echo hi")  # fmt: skip
        assert result.exit_code == 2, result.stdout
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
    bad = run(db, "queue", "add", "--outputs", "out/%{lr/m.json", "--cmd", "echo hi")
    assert bad.exit_code == 2 and "bad placeholder" in bad.stderr
    assert not db.exists()


def test_add_warns_about_a_glob_that_names_no_task(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    plain = run(db, "queue", "add", "--grid", "lr=1,2", "--outputs", "out/*/metrics.json",
                "--cmd", "echo %{lr}")  # fmt: skip
    assert plain.exit_code == 0 and plain.stdout.startswith("Added 2 tasks (ids 1-2).\nSnapshot ")
    assert plain.stderr.startswith("output glob 'out/*/metrics.json' names no task:")
    named = run(db, "queue", "add", "--grid", "lr=1,2", "--outputs", "out/%{lr}/metrics.json",
                "--outputs", "runs/{task_id}/*", "--cmd", "echo lr=%{lr}")  # fmt: skip
    assert (named.exit_code, named.stderr) == (0, "")


async def test_a_relative_workdir_is_under_home_as_where_the_task_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "exp" / "out").mkdir(parents=True)
    (tmp_path / "home" / "exp" / "out" / "a.json").write_text("{}")
    (tmp_path / "cwd" / "exp" / "out").mkdir(parents=True)
    (tmp_path / "cwd" / "exp" / "out" / "b.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "cwd")
    got = await fetch_local("exp", ["out/*.json"], tmp_path / "dest")
    assert got.files == ["out/a.json"]
