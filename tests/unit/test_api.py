"""The Python API (``dispatcher.Queue``) against real queue files, checked against the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher import Queue
from dispatcher.cli import _register, app
from dispatcher.core.models import TaskState
from dispatcher.errors import (
    IllegalTransitionError,
    NoQueueError,
    SweepError,
    TemplateError,
    UsageError,
)

S = TaskState
_register()


def cli(*args: str) -> Any:
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return done


@pytest.fixture
def q(tmp_path: Path) -> Queue:
    return Queue(db=tmp_path / "q.duckdb")


def end(q: Queue, task_id: int, state: TaskState, result: dict[str, Any] | None = None) -> None:
    """Finish a task through the store's state moves, as the dispatcher does."""
    with q.store.transaction() as txn:
        txn.move(task_id, S.LAUNCHING, host="local", run_id=f"r{task_id}", gpu_ids=[])
        txn.move(task_id, state, run_id=f"r{task_id}", exit_code=0, result=result)


def test_default_queue_is_the_clis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ids = Queue().add("echo %{x}", grid={"x": [1, 2]})
    assert Queue().path == (tmp_path / ".labtasker" / "queue.duckdb").resolve()
    listed = json.loads(cli("queue", "ls", "--json").stdout)
    assert [t["id"] for t in listed] == ids
    monkeypatch.setenv("LABTASKER_DB", str(tmp_path / "env.duckdb"))
    assert Queue().path == tmp_path / "env.duckdb"
    with pytest.raises(NoQueueError, match="no queue at"):  # only add creates a queue
        Queue().tasks()
    assert not (tmp_path / "env.duckdb").exists()


def test_add_grid_args_and_settings(q: Queue) -> None:
    ids = q.add(
        "train --lr %{lr} --depth %{model.depth} --tag %{tag}",
        args=[{"lr": 1, "model": {"depth": 0}, "tag": "hand picked"}],
        name="one",
    )
    ids += q.add(
        "train --lr %{lr} --depth %{model.depth} --tag %{tag} --epochs %{epochs}",
        args=[{"epochs": 10, "model": {"width": 8}}],  # merged into every grid point
        grid={"lr": [0.1, 0.01], "model.depth": [2, 4], "tag": ["g"]},
        name="sweep",
        priority=5,
        max_attempts=2,
        timeout=60,
        gpus=1,
    )
    assert len(ids) == 5 and ids == list(range(ids[0], ids[0] + 5))
    tasks = q.tasks()
    assert tasks[0]["command"] == "train --lr 1 --depth 0 --tag 'hand picked'"
    assert [t["args"] for t in tasks[1:3]] == [
        {"epochs": 10, "model": {"width": 8, "depth": 2}, "lr": 0.1, "tag": "g"},
        {"epochs": 10, "model": {"width": 8, "depth": 4}, "lr": 0.1, "tag": "g"},
    ]
    assert tasks[1]["command"] == "train --lr 0.1 --depth 2 --tag g --epochs 10"
    t = tasks[-1]
    assert (t["name"], t["priority"], t["max_attempts"], t["timeout"], t["gpus_requested"]) == (
        "sweep", 5, 2, 60.0, 1,
    )  # fmt: skip
    assert q.add("echo") != [] and q.tasks(ids=[ids[0]])[0]["id"] == ids[0]


def test_skip_existing_and_after(q: Queue) -> None:
    first = q.add("echo %{x}", grid={"x": [1, 2]})
    again = q.add("echo %{x}", grid={"x": [1, 2, 3]}, skip_existing=True)
    assert len(again) == 1 and q.tasks(ids=again)[0]["args"] == {"x": 3}
    (child,) = q.add("echo done", after=first)
    assert q.store.get(child).after == first


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"grid": {"lr": 0.1}}, SweepError, "give a list of values"),
        ({"grid": {"lr": "0.1,0.2"}}, SweepError, "give a list of values"),
        ({"grid": {"lr": []}}, SweepError, "empty"),
        ({"grid": {"m": [1], "m.depth": [2]}}, SweepError, "set twice"),
        ({"grid": {"lr": [1]}, "args": [{"lr": 2}]}, SweepError, "sets key 'lr'"),
        ({"grid": {"a..b": [1]}}, SweepError, "dotted names"),
        ({"args": {"lr": 1}}, SweepError, "list of dicts"),
        ({"args": [{"other": 1}]}, TemplateError, "lr"),
        ({"grid": {"lr": [1]}, "max_attempts": 0}, UsageError, "max attempts"),
    ],
)
def test_add_errors_add_nothing(
    q: Queue, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        q.add("run %{lr}", **kwargs)
    assert not q.path.exists() or q.tasks() == []


def test_empty_command_is_refused(q: Queue) -> None:
    with pytest.raises(UsageError, match="non-empty"):
        q.add("  ")


def test_tasks_by_state_cancel_and_retry(q: Queue) -> None:
    a, b, c, d = q.add("run %{i}", grid={"i": [1, 2, 3, 4]})
    end(q, a, S.FAILED)
    end(q, b, S.SUCCEEDED, {"acc": 1})
    with q.store.transaction() as txn:
        txn.move(c, S.LAUNCHING, host="local", run_id="rc", gpu_ids=[])
    assert [t["id"] for t in q.tasks(state="failed")] == [a]
    assert [t["id"] for t in q.tasks(state=["failed", S.SUCCEEDED])] == [a, b]
    assert q.cancel([c, d]) == [c, d]
    assert q.tasks(ids=[d])[0]["state"] == "cancelled"
    assert q.tasks(ids=[c])[0]["cancel_requested"] is True  # the dispatcher stops it
    assert q.retry(failed=True) == [a]
    assert q.tasks(ids=[a])[0]["state"] == "pending"
    assert q.retry([d]) == [d]
    with pytest.raises(IllegalTransitionError, match="succeeded"):
        q.retry([b])
    with pytest.raises(UsageError, match="name the tasks"):
        q.retry()
    with pytest.raises(UsageError, match="unknown state"):
        q.tasks(state="done")


def test_results_match_the_cli(q: Queue) -> None:
    a, b = q.add("run %{lr}", grid={"lr": [0.1, 0.2]})
    end(q, a, S.SUCCEEDED, {"acc": 0.5, "val": {"loss": 1.5}})
    end(q, b, S.FAILED, {"acc": 0.1})
    rows = q.results()
    assert rows[0]["result.val.loss"] == 1.5 and rows[1]["result.val.loss"] is None
    assert [r["args.lr"] for r in rows] == [0.1, 0.2]
    assert [r["id"] for r in q.results(state="succeeded")] == [a]
    printed = cli("--db", str(q.path), "results", "--format", "json").stdout
    assert json.loads(printed) == rows
    assert q.sql("SELECT id, result FROM tasks WHERE state = 'failed'") == [
        {"id": b, "result": {"acc": 0.1}}
    ]
    with pytest.raises(UsageError, match="read-only"):
        q.sql("DELETE FROM tasks")


@pytest.mark.skipif(importlib.util.find_spec("pandas") is not None, reason="pandas installed")
def test_results_df_without_pandas_says_what_to_install(q: Queue) -> None:
    with pytest.raises(ImportError, match="pip install pandas"):
        q.results_df()


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas not installed")
def test_results_df_with_pandas(q: Queue) -> None:
    a, _ = q.add("run %{lr}", grid={"lr": [0.1, 0.2]})
    end(q, a, S.SUCCEEDED, {"acc": 0.5, "val": {"loss": 1.5}})
    df = q.results_df(state="succeeded")
    assert list(df["id"]) == [a] and float(df["result.val.loss"].iloc[0]) == 1.5
    assert list(df.columns) == list(q.results()[0])


def test_add_random_points_throttle_and_outputs_match_the_cli(q: Queue, tmp_path: Path) -> None:
    ids = q.add(
        "train --lr %{lr} --act %{act}",
        random={"lr": {"loguniform": [1e-5, 1e-1]}, "act": {"choice": ["relu", "gelu"]}},
        samples=4,
        seed=2,
        max_running=2,
        outputs=["out/*.json"],
        name="r",
    )
    tasks = q.tasks(ids=ids)
    assert len(tasks) == 4
    assert {(t["max_running"], tuple(t["outputs"]), t["name"]) for t in tasks} == {
        (2, ("out/*.json",), "r")
    }
    sweep = tmp_path / "s.toml"
    sweep.write_text(
        'command = "train --lr %{lr} --act %{act}"\n[random]\nsamples = 4\nseed = 2\n'
        'lr = { loguniform = [1e-5, 1e-1] }\nact = { choice = ["relu", "gelu"] }\n'
    )
    preview = cli("queue", "add", "--file", str(sweep), "--dry-run").stdout.splitlines()
    assert [t["command"] for t in tasks] == preview  # one add path: same points as the file


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"random": {"lr": {"uniform": [0, 1]}}}, "needs samples=N"),
        ({"random": {"lr": {"uniform": [0, 1]}}, "samples": 2, "seed": "x"}, "seed must be"),
        ({"random": {}, "samples": 2}, "random= is empty"),
        ({"random": {"lr": [0, 1]}, "samples": 2}, "expected a distribution"),
        ({"max_running": 0}, "max running"),
        ({"outputs": ["../x"]}, "no '..'"),
    ],
)
def test_bad_random_throttle_or_outputs_add_nothing(
    q: Queue, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        q.add("run %{lr}", grid={"lr": [1]} if "random" not in kwargs else None, **kwargs)
    assert not q.path.exists() or q.tasks() == []


def test_add_refuses_gpu_needs_no_card_can_meet_as_queue_add_does(q: Queue, tmp_path: Path) -> None:
    from dispatcher.dispatch.logs import write_last_lines

    hosts = tmp_path / "hosts.toml"
    hosts.write_text('[hosts.gpu1]\nssh = "lab@10.0.0.5"\n')
    q.add("true")  # the queue exists; the dispatcher saw gpu1's one 40 GiB A100
    seen = {"index": 0, "name": "NVIDIA A100-SXM4-40GB", "total_mib": 40 * 1024}
    write_last_lines(q.path, {}, hosts={"gpu1": {"gpus": [seen]}})
    for needs in ({"gpu_type": "H100"}, {"min_gpu_memory": "80GiB"}, {"gpu_memory": "48GiB"}):
        with pytest.raises(UsageError, match="on any host") as refused:
            q.add("true", hosts=hosts, **needs)  # type: ignore[arg-type]
        flag = "--" + next(iter(needs)).replace("_", "-")
        value = str(next(iter(needs.values())))
        by_cli = CliRunner().invoke(
            app, ["--db", str(q.path), "queue", "add", "--hosts", str(hosts), flag, value, "true"]
        )
        assert by_cli.exit_code == 2 and str(refused.value) in by_cli.output  # the same words
    assert len(q.tasks()) == 1  # nothing was added
    (fits,) = q.add("true", hosts=hosts, gpu_type="a100", gpu_memory="30GiB", min_gpu_memory=2**35)
    (task,) = q.tasks(ids=[fits])
    assert (task["gpu_memory"], task["gpu_type"], task["min_gpu_memory"]) == (
        30 * 2**30,
        "a100",
        2**35,
    )
