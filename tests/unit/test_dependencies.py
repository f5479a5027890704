"""Dependencies of three kinds (``--after``, ``--after-any``, ``--after-failed``; core.deps)
through the real CLI and the real dispatch loop on local hosts (tests/loop_lab.py): what runs,
what is cancelled with which reason, and what a retry brings back. Also the cancels the store
makes with no dispatcher running, and the upgrade of a queue written before (schema 3)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from dispatcher.cli import app
from dispatcher.store import schema
from tests.loop_lab import LocalLab, assert_ran_once, until


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LocalLab]:
    lab = LocalLab(tmp_path / "lab", {"a": 2})
    yield lab
    await lab.close()


def run(db: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", str(db), *args])


def ok(db: Path, *args: str) -> str:
    result = run(db, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return str(result.stdout)


def listed(db: Path) -> dict[int, dict[str, Any]]:
    return {t["id"]: t for t in json.loads(ok(db, "queue", "ls", "--json"))}


def add(db: Path, *options: str) -> int:
    out = json.loads(ok(db, "queue", "add", "--json", "--gpus", "0", "--cmd", "true", *options))
    (task,) = out
    return int(task)


def journal_order(lab: LocalLab) -> list[tuple[str, int]]:
    return [(e.event, e.task) for e in lab.journal()]


async def test_after_any_and_after_failed_run_after_a_failure_after_is_cancelled(
    lab: LocalLab,
) -> None:
    (broken,) = lab.add(1, exit_code=2)
    (anyway,) = lab.add(1, options=("--after-any", str(broken)))
    (rescue,) = lab.add(1, options=("--after-failed", str(broken)))
    (blocked,) = lab.add(1, options=("--after", str(broken)))
    (chained,) = lab.add(1, options=("--after", str(blocked)))
    (good,) = lab.add(1)
    (unneeded,) = lab.add(1, options=("--after-failed", str(good)))
    before = listed(lab.db)
    assert before[anyway]["reason"] == f"waits for task {broken}"
    assert before[chained]["reason"] == f"waits for task {blocked}"
    assert (before[rescue]["after_failed"], before[anyway]["after_any"]) == ([broken], [broken])
    code, lines = await lab.dispatch()
    assert code == 1  # the broken task failed
    order = journal_order(lab)
    for later in (anyway, rescue):
        assert order.index(("start", later)) > order.index(("end", broken)), order
    assert_ran_once(lab, [anyway, rescue, good])
    tasks = listed(lab.db)
    assert tasks[broken]["state"] == "failed"
    cancelled = {
        blocked: f"dependency {broken} failed",
        chained: f"dependency {blocked} cancelled",
        unneeded: f"dependency {good} succeeded",
    }
    for task_id, reason in cancelled.items():
        assert (tasks[task_id]["state"], tasks[task_id]["reason"]) == ("cancelled", reason)
        assert lab.start_counts()[task_id] == 0
        assert f"task {task_id} cancelled ({reason})" in lines


async def test_a_failure_with_attempts_left_is_not_final(lab: LocalLab) -> None:
    # Attempt 1 fails, attempt 2 succeeds: --after waits it out, --after-failed never runs.
    (flaky,) = lab.add(1, exit_code=2, succeed_from=2, options=("--max-attempts", "2"))
    (after,) = lab.add(1, options=("--after", str(flaky)))
    (rescue,) = lab.add(1, options=("--after-failed", str(flaky)))
    code, _ = await lab.dispatch()
    assert code == 0
    tasks = listed(lab.db)
    assert (tasks[flaky]["state"], tasks[flaky]["attempt"]) == ("succeeded", 2)
    assert [a.outcome for a in lab.attempts(flaky)] == ["failed", "succeeded"]
    assert_ran_once(lab, [after])
    order = journal_order(lab)
    assert order.index(("start", after)) > max(
        i for i, e in enumerate(order) if e == ("end", flaky)
    ), order
    assert tasks[rescue]["state"] == "cancelled"
    assert tasks[rescue]["reason"] == f"dependency {flaky} succeeded"


async def test_retry_brings_back_the_tasks_cancelled_for_it_and_they_run(lab: LocalLab) -> None:
    (dep,) = lab.add(1, exit_code=2, succeed_from=2)  # fails once; its retry succeeds
    (first,) = lab.add(1, options=("--after", str(dep)))
    (second,) = lab.add(1, options=("--after", str(first)))
    code, _ = await lab.dispatch()
    assert code == 1
    assert {listed(lab.db)[i]["state"] for i in (first, second)} == {"cancelled"}
    out = ok(lab.db, "queue", "retry", str(dep))
    assert out == f"Retrying 3 tasks (ids {dep}-{second}): back to pending.\n"
    tasks = listed(lab.db)
    assert tasks[first]["reason"] == f"waits for task {dep}"
    assert tasks[second]["reason"] == f"waits for task {first}"
    code, _ = await lab.dispatch()
    assert code == 0
    assert_ran_once(lab, [first, second])
    assert listed(lab.db)[dep]["state"] == "succeeded"


def test_the_store_cancels_dependents_without_a_dispatcher(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    first = add(db)
    waiting = add(db, "--after", str(first))
    anyway = add(db, "--after-any", str(first))
    rescue = add(db, "--after-failed", str(first))
    other = add(db)
    both = add(db, "--after-any", str(first), "--after-any", str(other))
    cancelled = run(db, "queue", "cancel", str(first))
    assert cancelled.stdout == "Cancelled 1 pending task.\n"
    assert cancelled.stderr == f"Also cancelled 1 task waiting for it (--after): id {waiting}.\n"
    tasks = listed(db)
    assert (tasks[rescue]["state"], tasks[rescue]["reason"]) == ("pending", None)
    assert (tasks[both]["state"], tasks[both]["reason"]) == ("pending", f"waits for task {other}")
    assert (tasks[waiting]["state"], tasks[waiting]["reason"]) == (
        "cancelled",
        f"dependency {first} cancelled",
    )
    assert (tasks[anyway]["state"], tasks[anyway]["reason"]) == ("pending", None)
    # A task added after a dependency that can no longer hold is cancelled at once.
    late = add(db, "--after", str(first))
    assert listed(db)[late]["reason"] == f"dependency {first} cancelled"
    # A user's cancel is not undone by retrying the dependency; the rule's cancels are.
    ok(db, "queue", "cancel", str(anyway))
    ok(db, "queue", "retry", str(first))
    states = {i: t["state"] for i, t in listed(db).items() if i not in (rescue, other, both)}
    assert states == {first: "pending", waiting: "pending", anyway: "cancelled", late: "pending"}


@pytest.mark.parametrize("kind", ["--after", "--after-any", "--after-failed"])
def test_dependencies_name_existing_tasks_and_hold_them_in_the_queue(
    tmp_path: Path, kind: str
) -> None:
    db = tmp_path / "q.duckdb"
    first = add(db)
    bad = run(db, "queue", "add", "--cmd", "true", kind, "99")
    assert bad.exit_code == 2
    assert bad.stderr.startswith(f"Error: {kind} names task 99, not in the queue")
    # Ids are checked before the new rows exist: the next id cannot name the task itself.
    own = run(db, "queue", "add", "--cmd", "echo own", kind, str(first + 1))
    assert own.exit_code == 2 and f"names task {first + 1}" in own.stderr
    waiting = add(db, kind, str(first))
    refused = run(db, "queue", "rm", str(first))
    assert refused.exit_code == 2
    assert refused.stderr.startswith(
        f"Error: task {first} cannot be removed: pending task {waiting} waits for it ({kind})"
    )
    assert set(listed(db)) == {first, waiting}


def test_sweep_file_and_api_keys(tmp_path: Path) -> None:
    from dispatcher.api import Queue

    db = tmp_path / "q.duckdb"
    first = add(db)
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'command = "echo %{{x}}"\nafter_any = {first}\nafter_failed = [{first}]\n'
                     "[grid]\nx = [1, 2]\n")  # fmt: skip
    ids = json.loads(ok(db, "queue", "add", "--json", "--file", str(sweep)))
    api_ids = Queue(db).add("echo api", after=[first], after_any=[first], after_failed=[first])
    tasks = listed(db)
    for i in ids:
        assert (tasks[i]["after"], tasks[i]["after_any"], tasks[i]["after_failed"]) == (
            [],
            [first],
            [first],
        )
    (api_id,) = api_ids
    assert tasks[api_id]["after"] == tasks[api_id]["after_failed"] == [first]
    sweep.write_text('command = "x"\nafter = ["1"]\n')
    bad = run(db, "queue", "add", "--file", str(sweep))
    assert bad.exit_code == 2 and "'after' must be a task id or a list of them" in bad.stderr


def _v3_queue(path: Path) -> None:
    """A queue file as labtasker wrote it at schema version 3: task 1 failed, task 2 waits for
    it (and would wait forever then), task 3 succeeded."""
    con = duckdb.connect(str(path))
    for step in schema.MIGRATIONS[:3]:
        for statement in step:
            con.execute(statement)
    con.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")
    con.execute("UPDATE meta SET value = 4 WHERE key = 'next_id'")
    now = datetime(2026, 1, 1)
    for task_id, state, after in ((1, "failed", []), (2, "pending", [1]), (3, "succeeded", [])):
        con.execute(
            "INSERT INTO tasks (id, state, args, template, command, created_at, after, batch,"
            " reason) VALUES (?, ?, '{}', 'true', 'true', ?, ?, ?, ?)",
            [task_id, state, now, after, task_id, "exit 2" if state == "failed" else None],
        )
    con.close()


async def test_a_schema_3_queue_is_upgraded_and_its_stuck_task_cancelled(lab: LocalLab) -> None:
    _v3_queue(lab.db)
    tasks = listed(lab.db)  # the upgrade keeps every row and adds the new columns
    assert {i: t["state"] for i, t in tasks.items()} == {1: "failed", 2: "pending", 3: "succeeded"}
    assert (tasks[2]["after"], tasks[2]["after_any"], tasks[2]["after_failed"]) == ([1], [], [])
    assert tasks[1]["reason"] == "exit 2"
    con = duckdb.connect(str(lab.db))
    version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    con.close()
    assert version == (schema.SCHEMA_VERSION,) and schema.SCHEMA_VERSION >= 4
    code, lines = await lab.dispatch()  # its first round applies the rule to every task
    assert code == 0
    assert listed(lab.db)[2]["reason"] == "dependency 1 failed"
    assert "task 2 cancelled (dependency 1 failed)" in lines


async def test_a_task_added_while_dispatch_runs_is_cancelled_when_its_dependency_fails(
    lab: LocalLab,
) -> None:
    gate = lab.root / "go"
    (broken,) = lab.add(1, exit_code=2, gate=gate)
    running = lab.start()
    await until(lambda: lab.starts(), "the first task started", running)
    (waiter,) = lab.add(1, options=("--after", str(broken)))
    (anyway,) = lab.add(1, options=("--after-any", str(broken)))
    gate.touch()
    assert await running == 1
    tasks = listed(lab.db)
    assert (tasks[waiter]["state"], tasks[waiter]["reason"]) == (
        "cancelled",
        f"dependency {broken} failed",
    )
    assert_ran_once(lab, [anyway])


def test_a_retried_task_whose_other_dependency_failed_is_cancelled_again(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    first, second = add(db), add(db)
    both = add(db, "--after", str(first), "--after", str(second))
    assert f"1 pending: waits for task {first}" in ok(db, "status")
    ok(db, "queue", "cancel", str(first), str(second))
    assert listed(db)[both]["reason"] == f"dependency {first} cancelled"
    again = run(db, "queue", "retry", str(first), str(both))
    assert again.stdout == f"Retrying 1 task (id {first}): back to pending.\n"
    assert again.stderr == f"Cancelled again: id {both}; see `labtasker queue show ID` for why.\n"
    assert listed(db)[both]["reason"] == f"dependency {second} cancelled"
    out = ok(db, "queue", "retry", str(second))
    assert out == f"Retrying 2 tasks (ids {second}-{both}): back to pending.\n"
    assert listed(db)[both]["reason"] == f"waits for task {first}"


def test_the_cancel_note_says_it_for_one_task_them_for_several(tmp_path: Path) -> None:
    db = tmp_path / "q.duckdb"
    first, second = add(db), add(db)
    waiting = [add(db, "--after", str(first)), add(db, "--after", str(second))]
    one = run(db, "queue", "cancel", str(first))
    assert one.stderr == f"Also cancelled 1 task waiting for it (--after): id {waiting[0]}.\n"
    third = add(db)
    late = add(db, "--after", str(third))
    both = run(db, "queue", "cancel", str(second), str(third))
    assert both.stdout == "Cancelled 2 pending tasks.\n"
    assert both.stderr == (
        f"Also cancelled 2 tasks waiting for them (--after): ids {waiting[1]}, {late}.\n"
    )


def test_the_help_of_each_dependency_option_says_when_it_starts() -> None:
    result = CliRunner().invoke(app, ["queue", "add", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.split())
    assert "--after <int> Start only after this task succeeded." in text
    assert "--after-any <int> Start only after this task ended." in text
    assert "--after-failed <int> Start only if this task failed or was cancelled." in text
