"""``labtasker results --plot METRIC --x ARG [--by ARG]`` through the real CLI on a real queue:
one marker per task, the legend, mean and spread per x; bare names resolve as ``--columns`` does;
and the pure chart (``core.textplot``) places every point."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatcher.cli import _register, app
from dispatcher.core.models import TaskState
from dispatcher.core.textplot import Point, draw, log_axis, summarise
from dispatcher.store.queue import Store

_register()


def acc(lr: float, seed: int) -> float:
    return round(0.9 + 0.02 * math.log10(lr) + 0.01 * seed, 6)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nine finished tasks (lr x seed) with result acc, and one pending."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "q.duckdb"
    argv = ["--db", str(path), "queue", "add", "--gpus", "0", "--cmd", "echo %{lr} %{seed}"]
    grid = ["--grid", "lr=0.1,0.01,0.001", "--grid", "seed=1,2,3"]
    assert CliRunner().invoke(app, [*argv, *grid]).exit_code == 0
    assert CliRunner().invoke(app, [*argv, "--grid", "lr=1", "--grid", "seed=9"]).exit_code == 0
    with Store(path).transaction() as tx:
        for t in tx.tasks()[:9]:  # as dispatch records a finished run
            run = f"r{t.id}"
            tx.move(t.id, TaskState.LAUNCHING, host="h", run_id=run)
            tx.move(t.id, TaskState.RUNNING, run_id=run)
            result = {"acc": acc(t.args["lr"], t.args["seed"])}
            tx.move(t.id, TaskState.SUCCEEDED, run_id=run, exit_code=0, result=result)
    return path


def run(db: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--db", str(db), "results", *args], env={"COLUMNS": "100"})
    return result.exit_code, result.stdout + result.stderr


def test_plot_by_seed_draws_one_marker_per_task_and_the_mean_per_x(db: Path) -> None:
    code, out = run(db, "--plot", "acc", "--x", "lr", "--by", "seed")
    assert code == 0, out
    assert "result.acc against args.lr (9 tasks)" in out
    assert "args.lr (log)" in out  # 0.001 .. 0.1 spans two decades
    assert "o args.seed=1   x args.seed=2   + args.seed=3" in out
    chart = [line.split("│", 1)[1] for line in out.splitlines() if "│" in line]
    assert sum(line.count(m) for line in chart for m in "ox+&") == 9
    for seed in (1, 2, 3):
        for lr in (0.001, 0.01, 0.1):
            assert f"{seed}  {lr:.4g}  1  {acc(lr, seed):.4g}  0" in out


def test_plot_without_by_gives_mean_and_spread_over_the_seeds(db: Path) -> None:
    code, out = run(db, "--plot", "result.acc", "--x", "args.lr")
    assert code == 0, out
    for lr in (0.001, 0.01, 0.1):
        ys = [acc(lr, s) for s in (1, 2, 3)]
        mean = sum(ys) / 3
        sd = math.sqrt(sum((y - mean) ** 2 for y in ys) / 3)
        assert f"{lr:.4g}  3  {mean:.4g}  {sd:.3g}" in out
    assert "1 tasks without a number in both columns left out" in out  # the pending one


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--plot", "acc"], "--plot needs --x"),
        (["--x", "lr"], "--x and --by go with --plot METRIC"),
        (["--plot", "loss", "--x", "lr"], "--plot: no column 'loss'"),
        (["--plot", "acc", "--x", "lr", "--by", "nope"], "--by: no column 'nope'"),
    ],
)
def test_plot_mistakes_are_one_line(db: Path, args: list[str], said: str) -> None:
    code, out = run(db, *args)
    assert code == 2  # a usage error
    assert said in out and out.count("\n") == 1, out


def test_draw_puts_each_point_in_its_cell() -> None:
    points = [Point(0, 0, "a"), Point(10, 5, "a"), Point(5, 5, "b")]
    lines = draw(points, width=11, height=6, x_label="x")
    grid = [line.split("│", 1)[1].ljust(11) for line in lines[:6]]
    assert grid[5][0] == "o" and grid[0][10] == "o" and grid[0][5] == "x"
    assert sum(row.count("o") + row.count("x") for row in grid) == 3
    assert log_axis([0.001, 0.1]) and not log_axis([0.01, 0.1]) and not log_axis([0, 10])
    a0, a10, b5 = summarise(points)
    assert (a0.group, a0.x, a0.n, a0.mean) == ("a", 0, 1, 0) and a10.mean == 5
    assert b5.group == "b"
