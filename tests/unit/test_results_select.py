"""``labtasker results --columns/--sort/--where`` and the table that fits the terminal, through the
real CLI over a queue whose tasks ran on a local host (tests/loop_lab.py) and wrote their results
to ``$LABTASKER_RESULT``, as docs/results.md tells a task to."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from dispatcher.cli import app
from dispatcher.errors import UsageError
from tests.loop_lab import LocalLab

TASK_PY = """
import json, os, sys
lr, seed = float(sys.argv[1]), int(sys.argv[2])
acc = round(0.5 + lr * 2 + seed / 100, 4)
result = {"acc": acc, "seed": seed, "val": {"loss": round(1 - acc, 4)}, "note": "n" * 40}
with open(os.environ["LABTASKER_RESULT"], "w") as f:
    json.dump(result, f)
"""
TAG = "a-long-tag-that-is-much-wider-than-a-column-may-be"
#: (args.lr, args.seed) -> result.acc of the four tasks.
ACC = {(0.1, 1): 0.71, (0.1, 2): 0.72, (0.01, 1): 0.53, (0.01, 2): 0.54}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLab]:
    """Four finished tasks (lr x seed) with results, and one still pending without any."""
    lab = LocalLab(tmp_path_factory.mktemp("results") / "lab", {"a": 2})
    script = lab.root / "task.py"
    script.write_text(TASK_PY)
    cmd = f"{sys.executable} {script} %{{lr}} %{{seed}} %{{tag}}"
    grids = ["--grid", "lr=0.1,0.01", "--grid", "seed=1,2", "--grid", f"tag={TAG}"]
    cli(lab, "queue", "add", "--gpus", "0", *grids, "--cmd", cmd)
    code, lines = asyncio.run(lab.dispatch())
    assert code == 0, lines
    assert [t.state for t in lab.tasks().values()] == ["succeeded"] * 4
    cli(lab, "queue", "add", "--gpus", "0", "--cmd", "true")  # pending: no result, no args
    yield lab
    asyncio.run(lab.close())


def invoke(lab: LocalLab, *args: str, columns: int = 80) -> Any:
    env = {"COLUMNS": str(columns), "LABTASKER_DB": None}
    return CliRunner().invoke(app, ["--db", str(lab.db), *args], env=env)


def cli(lab: LocalLab, *args: str, columns: int = 80) -> str:
    done = invoke(lab, *args, columns=columns)
    assert done.exit_code == 0, (done.stdout, done.stderr)
    return str(done.stdout)


def error(lab: LocalLab, *args: str) -> str:
    """The one line a refused ``results`` prints (exit 2, input error; nothing on stdout)."""
    done = invoke(lab, "results", *args)
    assert done.exit_code == 2, (done.stdout, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr, done.output
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    return str(done.stderr)


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_default_table_fits_80_columns_with_args_and_results_first(lab: LocalLab) -> None:
    out = cli(lab, "results")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    header = lines[0].split()
    assert header[0].startswith("args."), header
    # args, then result columns; the rest (id, state, ...) after them, where they fit
    kinds = [name.split(".")[0] for name in header if name != "│"]
    assert kinds == sorted(kinds, key=lambda k: ("args", "result").index(k) if "." in k else 2)
    assert "…" in out  # the long tag is cut, not wrapped
    assert TAG not in out
    footer = " ".join(out[out.index(" hidden to fit ") :].split())  # wrapped at 80
    assert footer.startswith("hidden to fit 80 characters: "), out
    assert "state" in footer and "exit_code" in footer and "id," not in footer  # id fits
    assert footer.endswith("Choose with --columns, or see all with --wide or --format csv."), out


def test_every_width_fits_and_wide_shows_everything(lab: LocalLab) -> None:
    for width in (30, 50, 120, 200):
        out = cli(lab, "results", columns=width)
        assert max(len(line) for line in out.splitlines()) <= width, (width, out)
    out = cli(lab, "results", "--wide")
    assert TAG in out and "hidden" not in out
    assert max(len(line) for line in out.splitlines()) > 80


def test_columns_pick_and_order_in_every_format(lab: LocalLab) -> None:
    text = cli(lab, "results", "--columns", "id,state,args.lr,result.acc", "--format", "csv")
    rows = csv_rows(text)
    assert rows[0] == ["id", "state", "args.lr", "result.acc"]
    assert rows[1] == ["1", "succeeded", "0.1", "0.71"] and len(rows) == 6
    out = cli(lab, "results", "-c", "id,state,args.lr,result.acc")
    assert out.splitlines()[0].split()[::2] == ["id", "state", "args.lr", "result.acc"]
    assert "hidden" not in out
    items = json.loads(cli(lab, "results", "-c", "result.acc,id", "-f", "json"))
    assert list(items[0]) == ["result.acc", "id"]


def test_bare_names_and_their_errors(lab: LocalLab) -> None:
    rows = csv_rows(cli(lab, "results", "-c", "id,lr,acc,loss,STATE", "-f", "csv"))
    assert rows[0] == ["id", "args.lr", "result.acc", "result.val.loss", "state"]
    message = error(lab, "-c", "id,seed")
    assert message == (
        "Error: --columns: 'seed' is ambiguous; it matches args.seed, result.seed;"
        " give one of them\n"
    )
    message = error(lab, "-c", "id,nope")
    assert "no column 'nope'" in message and "args.lr" in message
    assert "'seed' is ambiguous" in error(lab, "--sort", "-seed")
    assert "empty name" in error(lab, "-c", "id,,lr")


def test_sort_ascending_descending_and_several_keys(lab: LocalLab) -> None:
    def accs(*args: str) -> list[str]:
        rows = csv_rows(cli(lab, "results", "-c", "acc", "-f", "csv", *args))
        return [r[0] if r else "" for r in rows[1:]]  # a lone NULL: an empty line

    assert accs("--sort", "result.acc") == ["0.53", "0.54", "0.71", "0.72", ""]  # NULL last
    assert accs("--sort", "-result.acc") == ["0.72", "0.71", "0.54", "0.53", ""]
    assert accs("--sort", "-args.seed,acc") == ["0.54", "0.72", "0.53", "0.71", ""]
    ids = [r[0] for r in csv_rows(cli(lab, "results", "-c", "id", "--sort", "lr", "-f", "csv"))]
    assert ids == ["id", "3", "4", "1", "2", "5"]  # ties in id order, the empty cell last
    out = cli(lab, "results", "-c", "id,acc", "--sort", "-acc")
    ids = [line.split()[0] for line in out.splitlines()[2:]]
    assert ids == ["2", "1", "4", "3", "5"], out


def test_where_filters_rows_in_every_format(lab: LocalLab, tmp_path: Path) -> None:
    where = "result.acc > 0.6 AND state = 'succeeded'"
    rows = csv_rows(cli(lab, "results", "-w", where, "-c", "id,acc", "-f", "csv"))
    assert rows == [["id", "result.acc"], ["1", "0.71"], ["2", "0.72"]]
    conds = ("acc < 0.6", '"result.acc" < 0.6', "val.loss > 0.4", "result.val.loss > 0.4")
    for cond in (*conds, "loss > 0.4", '"val.loss" > 0.4'):
        items = json.loads(cli(lab, "results", "--where", cond, "-f", "json"))
        assert [i["id"] for i in items] == [3, 4], cond
    for cond in ("args.tag LIKE 'a-long%'", "runtime / 60 < 5"):  # as docs/results.md says
        items = json.loads(cli(lab, "results", "--where", cond, "-f", "json"))
        assert [i["id"] for i in items] == [1, 2, 3, 4], cond
    dest = tmp_path / "best.parquet"
    cli(lab, "results", "-w", "lr = 0.1", "--sort", "-acc", "-c", "id,lr,acc", "-o", str(dest))
    got = duckdb.connect().execute(f"SELECT * FROM '{dest}'").fetchall()
    assert got == [(2, 0.1, 0.72), (1, 0.1, 0.71)]
    table = cli(lab, "results", "-w", "args.seed = 2", "-c", "id,args.seed")
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["2", "4"], table
    done = invoke(lab, "results", "-w", "acc > 0.99")
    assert done.exit_code == 0 and "No tasks matching --where." in done.stderr


@pytest.mark.parametrize(
    ("cond", "message"),
    [
        ("acc >", "--where 'acc >': SQL syntax error: Parser Error"),
        ("nope > 1", 'Binder Error: Referenced column "nope" not found'),
        ("note::INTEGER > 1", "Conversion Error"),
        ("true; DROP TABLE tasks", "SQL syntax error"),
        ("true); DELETE FROM tasks; SELECT (1", "is not one SQL condition"),
        (" ", "--where is empty"),
    ],
)
def test_a_bad_where_is_one_error_line(lab: LocalLab, cond: str, message: str) -> None:
    for fmt in ("table", "csv", "json"):
        assert message in error(lab, "-w", cond, "-f", fmt)
    assert len(lab.tasks()) == 5


def test_the_api_takes_the_same_selection(lab: LocalLab) -> None:
    from dispatcher import Queue

    rows = Queue(db=str(lab.db)).results(columns="id,acc", sort="-acc", where="lr = 0.01")
    assert rows == [{"id": 4, "result.acc": 0.54}, {"id": 3, "result.acc": 0.53}]
    with pytest.raises(UsageError, match="ambiguous"):
        Queue(db=str(lab.db)).results(columns="seed")
