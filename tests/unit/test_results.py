"""``labtasker results`` and ``labtasker sql`` on real queue files; results written through the
store's state moves (and, for 1,000 rows, one set-based SQL update in a store transaction)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dispatcher.cli import _register, app
from dispatcher.core.models import NewTask, TaskState
from dispatcher.core.words import EMPTY_QUEUE
from dispatcher.errors import UsageError
from dispatcher.store import results
from dispatcher.store.queue import Store
from dispatcher.store.schema import dump_json, migrate

S = TaskState
REPO = Path(__file__).resolve().parents[2]
_register()


def run(db: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["--db", str(db), *args])


def add(store: Store, *arg_dicts: dict[str, Any]) -> list[int]:
    tasks = [NewTask(args=a, template="run", command=f"run {i}") for i, a in enumerate(arg_dicts)]
    return store.add(tasks).ids


def finish(
    store: Store,
    task_id: int,
    result: dict[str, Any] | None,
    *,
    state: TaskState = S.SUCCEEDED,
    exit_code: int | None = 0,
    gpu_ids: list[int] | None = None,
) -> None:
    """Launch, run and end a task the way the dispatcher does: through ``Txn.move``."""
    with store.transaction() as txn:
        run_id = f"r{task_id}"
        txn.move(task_id, S.LAUNCHING, host="gpu1", run_id=run_id, gpu_ids=gpu_ids or [0])
        txn.move(task_id, S.RUNNING, run_id=run_id)
        if state is not S.RUNNING:
            txn.move(task_id, state, run_id=run_id, exit_code=exit_code, result=result)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "q.duckdb"


@pytest.fixture
def store(db: Path) -> Store:
    return Store(db)


def rows_by_id(store: Store, states: list[TaskState] | None = None) -> dict[int, dict[str, Any]]:
    names, rows, _ = results.read(store, states)
    return {r[0]: dict(zip(names, r, strict=True)) for r in rows}


def test_columns_flatten_args_and_nested_results(store: Store) -> None:
    a, b, c = add(
        store,
        {"lr": 0.1, "model": {"depth": 2, "act": "relu"}},
        {"lr": 0.01, "model": {"depth": 4, "act": "gelu"}},
        {"lr": 1, "model": {"depth": 8, "act": "relu"}},
    )
    finish(store, a, {"acc": 0.9, "val": {"loss": 0.5}}, gpu_ids=[0, 1])
    finish(store, b, {"acc": 0.8, "val": {"loss": 0.25, "top5": 0.99}, "tags": ["x", "y"]})
    finish(store, c, {"acc": 0.1}, state=S.FAILED, exit_code=3)
    names, _, total = results.read(store)
    assert total == 3
    assert names == [
        "id", "name", "state", "host", "gpus", "runtime", "exit_code", "reason",
        "args.lr", "args.model.depth", "args.model.act",
        "result.acc", "result.val.loss", "result.val.top5", "result.tags",
    ]  # fmt: skip
    rows = rows_by_id(store)
    assert rows[a]["gpus"] == [0, 1] and rows[a]["host"] == "gpu1"
    assert rows[a]["result.val.loss"] == 0.5 and rows[a]["result.val.top5"] is None
    assert rows[b]["result.tags"] == ["x", "y"] and rows[b]["result.val.top5"] == 0.99
    assert rows[c]["state"] == "failed" and rows[c]["exit_code"] == 3
    assert [rows[i]["args.lr"] for i in (a, b, c)] == [0.1, 0.01, 1.0]  # int + float: DOUBLE
    assert isinstance(rows[a]["args.model.depth"], int)
    assert all(r["runtime"] is not None and r["runtime"] >= 0 for r in rows.values())


def test_mixed_types_odd_keys_nan_and_missing_results(store: Store) -> None:
    ids = add(store, {"x": 1}, {"x": 2}, {"x": 3}, {"x": 4}, {"x": 5})
    finish(store, ids[0], {"score": 1, "a.b": 1, 'say "hi"': "yes", "flag": True, "v": {"w": 1}})
    finish(store, ids[1], {"score": "n/a", "loss": math.nan, "flag": False, "v": 3, "none": None})
    finish(store, ids[2], None, state=S.RUNNING)
    finish(store, ids[3], None, state=S.FAILED, exit_code=-9)
    rows = rows_by_id(store)
    first, second = rows[ids[0]], rows[ids[1]]
    # A key whose type differs between tasks (or that is an object in one, a number in another)
    # is one JSON column; its values come back as Python values.
    assert (first["result.score"], second["result.score"]) == (1, "n/a")
    assert (first["result.v"], second["result.v"]) == ({"w": 1}, 3)
    assert first["result.a.b"] == 1 and first['result.say "hi"'] == "yes"
    assert (first["result.flag"], second["result.flag"]) == (True, False)
    assert math.isnan(second["result.loss"]) and first["result.loss"] is None
    assert second["result.none"] is None
    running, failed, pending = rows[ids[2]], rows[ids[3]], rows[ids[4]]
    assert running["state"] == "running" and running["runtime"] >= 0
    assert running["result.score"] is None and running["exit_code"] is None
    assert failed["exit_code"] == -9
    assert pending["runtime"] is None and pending["host"] is None


def test_state_filter_limits_rows_and_keys(store: Store) -> None:
    ok, bad = add(store, {"k": 1}, {"k": 2})
    finish(store, ok, {"acc": 0.5})
    finish(store, bad, {"traceback_lines": 40}, state=S.FAILED, exit_code=1)
    names, rows, total = results.read(store, [S.SUCCEEDED])
    assert total == 1 and [r[0] for r in rows] == [ok]
    assert "result.acc" in names and "result.traceback_lines" not in names
    names, rows, total = results.read(store, [S.PENDING])
    assert (rows, total) == ([], 0) and names[-1] == "reason"


def test_key_case_clash_gets_a_distinct_column(store: Store) -> None:
    (t,) = add(store, {"k": 0})
    finish(store, t, {"Loss": 1, "loss": 2, "a": {"b": 3}, "a.b": 4})
    row = rows_by_id(store)[t]
    assert row["result.Loss"] == 1 and row["result.loss#2"] == 2
    assert row["result.a.b"] == 3 and row["result.a.b#2"] == 4


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
KEYS = st.text(alphabet="abcxyz_ '\"\\$[]*-é", min_size=1, max_size=6)
NESTED = st.recursive(
    JSON_SCALARS, lambda inner: st.dictionaries(KEYS, inner, min_size=1, max_size=3), max_leaves=8
)


def leaves(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(value, dict):
        out: dict[tuple[str, ...], Any] = {}
        for k, v in value.items():
            out.update(leaves(v, (*path, k)))
        return out
    return {path: value}


@pytest.fixture(scope="module")
def memory_con(tmp_path_factory: pytest.TempPathFactory) -> Any:
    con = duckdb.connect(":memory:")
    migrate(con, "memory", tmp_path_factory.mktemp("m") / "unused.duckdb")
    return con


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(result=st.dictionaries(KEYS, NESTED, max_size=4))
def test_every_leaf_comes_back_in_its_column(memory_con: Any, result: dict[str, Any]) -> None:
    con = memory_con
    con.execute("DELETE FROM tasks")
    con.execute(
        "INSERT INTO tasks (id, state, args, template, command, created_at, result)"
        " VALUES (1, 'succeeded', '{}', 't', 'c', now(), ?)",
        [dump_json(result)],
    )
    cols = results.columns(con, now=results_now())
    names, rows = results.fetch(con, results.select_sql(cols))
    row = dict(zip(names, rows[0], strict=True))
    expected = {"result." + ".".join(p): v for p, v in leaves(result).items() if p}
    # Keys differing only in case share a name; the clash gets a suffix (tested above).
    if len({k.lower() for k in expected}) == len(expected):
        assert {k: row[k] for k in expected} == expected
    assert len(names) == len(results.BASE_COLUMNS) + len(expected)


def results_now() -> Any:
    from datetime import datetime

    return datetime(2030, 1, 1)


@pytest.fixture
def thousand(store: Store) -> Store:
    """1,000 finished tasks with args from a grid and nested, varying result keys."""
    from dispatcher.core.sweep import grid_from_items
    from dispatcher.store.add import TaskBatch

    grid = grid_from_items(["lr=" + ",".join(str(i / 100) for i in range(1, 41)), "seed=1,2,3,4,5"])
    grid5 = grid_from_items(["size=" + ",".join(["s", "m", "l", "xl", "xxl"])])
    store.add_batch(TaskBatch(template="t %{lr} %{seed}", groups=[grid]))  # 200 tasks
    store.add_batch(TaskBatch(template="u %{size}", groups=[grid5] * 160))  # 800 tasks
    with store.transaction() as txn:
        txn.con.execute(
            "UPDATE tasks SET state = 'succeeded', host = 'gpu' || (id % 3), gpu_ids = [id % 4],"
            " started_at = created_at, finished_at = created_at + INTERVAL 2 SECOND,"
            " exit_code = 0, result = CASE WHEN id % 2 = 0"
            " THEN '{\"acc\":' || (id % 100) / 100 || ',\"val\":{\"loss\":' || id || '}}'"
            ' ELSE \'{"acc":\' || (id % 100) / 100 || \',"val":{"f1":0.5}}\' END'
        )
    return store


def test_thousand_rows_in_every_format(thousand: Store, tmp_path: Path) -> None:
    db = thousand.path
    done = run(db, "results")
    assert done.exit_code == 0, done.output
    assert "Showing the first 50 of 1,000 tasks" in done.output
    parquet = tmp_path / "r.parquet"
    done = run(db, "results", "--output", str(parquet))
    assert done.exit_code == 0, done.output
    con = duckdb.connect()
    got = con.execute(
        f'SELECT count(*), count("result.val.loss"), sum("result.val.loss"),'
        f' count("args.size"), typeof(any_value("runtime")) FROM \'{parquet}\''
    ).fetchone()
    assert got == (1000, 500, sum(range(2, 1001, 2)), 800, "DOUBLE")
    done = run(db, "results", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(table) == 1000 and table[1]["result.val.loss"] == "2"
    assert table[0]["args.lr"] == "0.01" and table[0]["args.size"] == ""
    out = tmp_path / "r.json"
    done = run(db, "results", "--format", "json", "--state", "succeeded", "-o", str(out))
    items = json.loads(out.read_text())
    assert len(items) == 1000 and items[1]["result.val.loss"] == 2 and items[1]["gpus"] == [2]


def test_results_json_to_stdout_matches_the_api(store: Store, db: Path) -> None:
    ids = add(store, {"a": 1}, {"a": 2})
    finish(store, ids[0], {"m": {"n": 1.5}})
    done = run(db, "results", "--format", "json")
    assert done.exit_code == 0, done.output
    from dispatcher import Queue

    assert json.loads(done.stdout) == Queue(db).results()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "parquet"], "give a file with --output"),
        (["--output", "x.txt"], "cannot tell the format of x.txt"),
        (["--format", "table", "--output", "x.csv"], "prints to the terminal"),
        (["--state", "done"], "unknown state 'done'"),
    ],
)
def test_results_usage_errors_exit_2(db: Path, args: list[str], message: str) -> None:
    done = run(db, "results", *args)
    assert done.exit_code == 2 and message in done.output, done.output


def test_results_on_an_empty_queue_and_unwritable_output(db: Path, tmp_path: Path) -> None:
    Store(db).counts()  # a queue without tasks
    done = run(db, "results")
    assert done.exit_code == 0 and EMPTY_QUEUE in done.output
    done = run(db, "results", "-o", str(tmp_path / "missing-dir" / "r.csv"))
    assert done.exit_code == 2 and "cannot write" in done.output and "missing-dir" in done.output


# -- sql ---------------------------------------------------------------------------------------


@pytest.fixture
def sweep(store: Store) -> Store:
    """Two model sizes x three learning rates x two seeds, with accuracies."""
    ids = add(
        store,
        *(
            {"size": size, "lr": lr, "seed": seed}
            for size in ("small", "large")
            for lr in (0.1, 0.01, 0.001)
            for seed in (1, 2)
        ),
    )
    for i in ids:
        with store.transaction() as txn:
            args = txn.get(i).args
        acc = {0.1: 0.5, 0.01: 0.7, 0.001: 0.6}[args["lr"]] + (
            0.2 if args["size"] == "large" else 0
        )
        finish(store, i, {"acc": acc + args["seed"] / 100, "val": {"loss": 1 - acc}})
    return store


def doc_queries() -> dict[str, str]:
    """The ```sql blocks of docs/results.md, by the heading above them."""
    text = (REPO / "docs" / "results.md").read_text()
    out: dict[str, str] = {}
    heading = ""
    for part in text.split("```"):
        if part.startswith("sql\n"):
            out[heading] = part[4:].strip()
        else:
            lines = [ln for ln in part.splitlines() if ln.startswith("#")]
            heading = lines[-1].lstrip("# ").strip() if lines else heading
    return out


def test_docs_examples_run(sweep: Store) -> None:
    queries = doc_queries()
    assert len(queries) >= 3, queries
    by = {k.lower(): v for k, v in queries.items()}
    best = next(v for k, v in by.items() if "best learning rate" in k)
    names, rows = results.query(sweep, best)
    assert [(r[0], r[1]) for r in rows] == [("large", 0.01), ("small", 0.01)], (names, rows)
    mean = next(v for k, v in by.items() if "mean accuracy" in k)
    names, rows = results.query(sweep, mean)
    got = {(r[0], r[1]): r[2] for r in rows}
    assert got[("small", 0.1)] == pytest.approx(0.515) and len(got) == 6
    for query in queries.values():  # every documented query runs
        results.query(sweep, query)


def test_sql_cli_formats(sweep: Store) -> None:
    q = "SELECT args.size AS size, count(*) AS n FROM tasks GROUP BY ALL ORDER BY size"
    done = run(sweep.path, "sql", q)
    assert done.exit_code == 0 and "large" in done.output and "6" in done.output
    done = run(sweep.path, "sql", "--format", "json", q)
    assert json.loads(done.stdout) == [{"size": "large", "n": 6}, {"size": "small", "n": 6}]
    done = run(sweep.path, "sql", "-f", "csv", "SELECT id, args, gpus, finished_at FROM tasks")
    table = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(table) == 12 and json.loads(table[0]["args"])["size"] == "small"
    assert table[0]["gpus"] == "[0]"
    done = run(sweep.path, "sql", "-n", "3", "SELECT id FROM tasks ORDER BY id")
    assert "Showing the first 3 rows" in done.output
    done = run(sweep.path, "sql", "SELECT task_id, outcome FROM attempts WHERE task_id = 2")
    assert done.exit_code == 0 and "succeeded" in done.output


WRITES = [
    "DELETE FROM tasks",
    "UPDATE tasks SET state = 'pending'",
    "INSERT INTO tasks SELECT * FROM tasks",
    "DROP TABLE tasks",
    "CREATE TABLE x AS SELECT * FROM tasks",
    "WITH x AS (SELECT 1) DELETE FROM tasks",
    "COPY tasks TO 'out.csv'",
    "ATTACH 'other.duckdb' AS o",
    "SET threads = 1",
    "CHECKPOINT",
    "/* a comment */ delete from tasks -- and one more",
    "SELECT 1; DELETE FROM tasks",
    "SELECT 1; SELECT 2",
]


@pytest.mark.parametrize("statement", WRITES)
def test_sql_refuses_anything_but_one_select(sweep: Store, statement: str) -> None:
    before = sweep.counts()
    done = run(sweep.path, "sql", statement)
    assert done.exit_code == 2, done.output
    assert done.output.startswith("Error: ") and done.output.count("\n") == 1, done.output
    assert "read-only" in done.output or "exactly one SELECT" in done.output
    assert sweep.counts() == before


def test_sql_views_are_rolled_back(sweep: Store) -> None:
    results.query(sweep, "SELECT count(*) FROM tasks")
    with sweep.transaction() as txn:
        views = txn.con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal")
        assert views.fetchall() == []
        assert txn.con.execute("SELECT typeof(args) FROM tasks LIMIT 1").fetchone() == ("VARCHAR",)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELEC 1", "SQL syntax error"),
        ("SELECT nope FROM tasks", "SQL error: Binder Error"),
        ("SELECT (args->>'size')::INT FROM tasks", "SQL error: Conversion Error"),
    ],
)
def test_sql_errors_are_one_line_exit_2(sweep: Store, query: str, message: str) -> None:
    done = run(sweep.path, "sql", query)
    assert done.exit_code == 2 and message in done.output, done.output
    assert done.output.count("\n") == 1


def test_query_refuses_writes_even_without_the_cli(sweep: Store) -> None:
    with pytest.raises(UsageError, match="read-only"):
        results.query(sweep, "delete from tasks")


def test_real_entry_point(sweep: Store) -> None:
    argv = [sys.executable, "-m", "dispatcher", "--db", str(sweep.path)]
    done = subprocess.run(
        [*argv, "results", "--format", "csv", "--state", "succeeded"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    head = "id,name,state,host,gpus,runtime,exit_code,reason,args.size,args.lr"
    assert done.stdout.startswith(head)
    assert len(done.stdout.splitlines()) == 13
    done = subprocess.run(
        [*argv, "sql", "DELETE FROM tasks"], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert done.returncode == 2 and done.stderr.startswith("Error: `labtasker sql` is read-only")
