"""How the queue scales: `queue add` of big grids (new, and re-submitted with --skip-existing)
and `queue ls` on a million-task queue.

Runs the real CLI (``python -m dispatcher``) end to end, start-up included, 3 times each, and
prints a markdown section (machine, versions, median/min/max) for docs/benchmarks.md.

    python bench/queue_scale.py            # all cases
    python bench/queue_scale.py --quick    # skip the million-task cases
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dispatcher.core.models import TaskState  # noqa: E402
from dispatcher.store.queue import Store  # noqa: E402


def values(n: int) -> str:
    return ",".join(str(i) for i in range(n))


def grid_args(*sizes: int) -> list[str]:
    keys = "abc"
    args = []
    for key, n in zip(keys, sizes, strict=False):
        args += ["--grid", f"{key}={values(n)}"]
    words = ["python", "train.py"] + [f"--{k}=%{{{k}}}" for k in keys[: len(sizes)]]
    return [*args, "--", *words]


def _env() -> dict[str, str]:
    # Measure what an installed labtasker does: its bytecode is compiled once, not every start.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(REPO)}


def cli(db: Path, args: list[str]) -> float:
    env = _env()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "--db", str(db), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"labtasker {' '.join(args[:3])} failed: {done.stderr.strip()}")
    return elapsed


def timed(runs: int, once: Callable[[int], float]) -> list[float]:
    return [once(i) for i in range(runs)]


def fresh_add(tmp: Path, sizes: tuple[int, ...]) -> Callable[[int], float]:
    def once(i: int) -> float:
        db = tmp / f"add-{'x'.join(map(str, sizes))}-{i}.duckdb"
        took = cli(db, ["queue", "add", *grid_args(*sizes)])
        for leftover in tmp.glob(db.name + "*"):
            leftover.unlink()
        return took

    return once


def million_queue(tmp: Path) -> Path:
    """A 1,000,000-task queue with 16 running tasks, made once for the listing cases."""
    db = tmp / "million.duckdb"
    cli(db, ["queue", "add", *grid_args(100, 100, 100)])
    with Store(db).transaction() as tx:
        for task in tx.pending_candidates(16):
            run = f"bench-{task.id}"
            tx.move(task.id, TaskState.LAUNCHING, host="gpu-a", run_id=run, gpu_ids=[0])
            tx.move(task.id, TaskState.RUNNING, run_id=run)
    return db


def regrow(db: Path, c: int) -> float:
    """Re-submit the million-task grid with its last axis grown to ``c`` values."""
    return cli(db, ["queue", "add", "--skip-existing", *grid_args(100, 100, c)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="skip the million-task cases")
    opts = parser.parse_args()
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "dispatcher")], env=_env(), check=True
    )
    rows: list[tuple[str, str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="labtasker-bench-") as name:
        tmp = Path(name)
        rows.append(
            (
                "`queue add --grid a=<100> --grid b=<1000> -- python train.py ...`"
                " (100,000 tasks, new queue)",
                "< 2 s",
                timed(opts.runs, fresh_add(tmp, (100, 1000))),
            )
        )
        if not opts.quick:
            rows.append(
                (
                    "`queue add` of a 100 x 100 x 100 grid (1,000,000 tasks, new queue)",
                    "< 15 s",
                    timed(opts.runs, fresh_add(tmp, (100, 100, 100))),
                )
            )
            db = million_queue(tmp)
            rows.append(
                (
                    "`queue ls --state running` (16 of 1,000,000 tasks)",
                    "< 0.5 s",
                    timed(opts.runs, lambda _: cli(db, ["queue", "ls", "--state", "running"])),
                )
            )
            rows.append(
                (
                    "`queue ls` (first 200 of 1,000,000 tasks)",
                    "",
                    timed(opts.runs, lambda _: cli(db, ["queue", "ls"])),
                )
            )
            counter = iter(range(10**6))
            rows.append(
                (
                    "`queue add --cmd ...` (1 task into a 1,000,000-task queue)",
                    "",
                    timed(
                        opts.runs,
                        lambda _: cli(db, ["queue", "add", "--cmd", f"one {next(counter)}"]),
                    ),
                )
            )
            grown = iter(range(101, 200))
            rows.append(
                (
                    "`queue add --skip-existing` of the grid grown by 10,000 points (1,010,000"
                    " points, 1,000,000 of them queued)",
                    "",
                    timed(opts.runs, lambda _: regrow(db, next(grown))),
                )
            )
        baseline = timed(opts.runs, lambda _: cli(tmp / "help.duckdb", ["--help"]))
        rows.append(("`labtasker --help` (start-up alone, for reference)", "", baseline))
    print_table(rows, opts.runs)


def print_table(rows: list[tuple[str, str, list[float]]], runs: int) -> None:
    versions = ", ".join(f"{pkg} {metadata.version(pkg)}" for pkg in ("duckdb", "typer", "rich"))
    print("## Queue scale (`bench/queue_scale.py`)\n")
    print(
        f"{os.cpu_count()} cores ({platform.machine()}, {platform.system()} {platform.release()}),"
        f" Python {platform.python_version()}, {versions}. Wall time of the whole CLI process,"
        f" start-up included (bytecode compiled, as when installed); {runs} runs each.\n"
    )
    print("| command | target | median | min | max |")
    print("| --- | --- | --- | --- | --- |")
    for label, target, times in rows:
        med, lo, hi = statistics.median(times), min(times), max(times)
        print(f"| {label} | {target} | {med:.2f} s | {lo:.2f} s | {hi:.2f} s |")


if __name__ == "__main__":
    main()
