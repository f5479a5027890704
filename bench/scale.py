"""Queue scale (benchmark 4): big ``queue add`` grids and listing a million-task queue.

Reuses bench/queue_scale.py's helpers (the real CLI, start-up included); adds ``status``,
``queue ls --json --state failed`` and the DuckDB file size.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from common import Config, Row, Section, Stats, fmt_seconds
from queue_scale import cli, fresh_add, million_queue

from dispatcher.core.models import TaskState
from dispatcher.store.queue import Store

FAILED = 100


def add_failed(db: Path, count: int) -> None:
    """Make ``count`` pending tasks failed, as real runs would (launching -> running -> failed)."""
    with Store(db).transaction() as tx:
        for task in tx.pending_candidates(count):
            run = f"bench-{uuid.uuid4().hex[:8]}"
            tx.move(task.id, TaskState.LAUNCHING, host="h1", run_id=run, gpu_ids=[])
            tx.move(task.id, TaskState.RUNNING, run_id=run)
            tx.move(task.id, TaskState.FAILED, run_id=run, exit_code=1)


def run(cfg: Config) -> Section:
    """Add 100k and 1M; list, status and JSON on the big queue."""
    runs = cfg.pick(3, 2)
    big = cfg.pick(10**6, 100_000)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="labtasker-bench-scale-") as name:
        tmp = Path(name)

        def add(sizes: tuple[int, ...], label: str, target: float) -> None:
            once = fresh_add(tmp, sizes)
            s = Stats.of([once(i) for i in range(runs)])
            rows.append(
                Row(label, s, "s", target=f"< {fmt_seconds(target)}", met=s.median < target)
            )

        add((100, 1000), "`queue add` of a 100 x 1000 grid (100,000 tasks, new queue)", 2.0)
        if big >= 10**6:
            add((100, 100, 100), "`queue add` of a 100 x 100 x 100 grid (1,000,000 tasks)", 15.0)
        db = million_queue(tmp) if big >= 10**6 else _small_queue(tmp)
        add_failed(db, FAILED)
        size = sum(p.stat().st_size for p in tmp.glob(db.name + "*"))
        on = f"{big:,}-task queue"

        def listing(args: list[str], label: str, target: float | None) -> None:
            s = Stats.of([cli(db, args) for _ in range(runs)])
            met = None if target is None else s.median < target
            tgt = "" if target is None else f"< {fmt_seconds(target)} incl. start-up"
            rows.append(Row(f"{label} on the {on}", s, "s", target=tgt, met=met))

        listing(["queue", "ls", "--state", "running"], "`queue ls --state running` (16 rows)", 0.5)
        listing(["status"], "`status`", 0.5)
        listing(
            ["queue", "ls", "--json", "--state", "failed"],
            f"`queue ls --json --state failed` ({FAILED} rows)",
            None,
        )
        listing(["queue", "ls"], "`queue ls` (first rows)", None)
        rows.append(Row(f"DuckDB file size, {on}", Stats.of([size / 1e6]), "MB"))
    section = Section(
        "Queue scale",
        "python3 bench/run.py --only scale",
        "Wall time of the whole CLI process (`python -m dispatcher`, bytecode compiled), start-up"
        f" included, {runs} runs each. Grid tasks look like `python train.py --a=1 --b=2 --c=3`."
        f" The listing queue has {big:,} tasks: 16 running, {FAILED} failed, the rest pending.",
        rows,
    )
    return section


def _small_queue(tmp: Path) -> Path:
    """The --quick stand-in for the million-task queue: 100,000 tasks, 16 running."""
    db = tmp / "big.duckdb"
    cli(
        db,
        [
            "queue",
            "add",
            "--grid",
            f"a={','.join(map(str, range(100)))}",
            "--grid",
            f"b={','.join(map(str, range(1000)))}",
            "--",
            "python",
            "train.py",
            "%{a}",
            "%{b}",
        ],
    )
    with Store(db).transaction() as tx:
        for task in tx.pending_candidates(16):
            run = f"bench-{task.id}"
            tx.move(task.id, TaskState.LAUNCHING, host="h1", run_id=run, gpu_ids=[])
            tx.move(task.id, TaskState.RUNNING, run_id=run)
    return db
