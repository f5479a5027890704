"""What one dispatched task costs the store: the per-task SQL the dispatch tick runs.

Times, on a real queue file, the moves every task makes (pending -> launching -> running ->
succeeded, one ``Txn.move`` each) and ``Txn.set_reasons`` as ``Dispatcher._place`` calls it each
tick; their sum bounds what one controller core can dispatch.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import Config, Row, Section, Stats

from dispatcher.core.models import TaskState
from dispatcher.store.add import TaskBatch
from dispatcher.store.queue import Store

S = TaskState


def run(cfg: Config) -> Section:
    """Per-call cost of the tick's store operations on a 2,000-task queue."""
    n = cfg.pick(200, 60)
    with tempfile.TemporaryDirectory(prefix="labtasker-bench-store-") as name:
        store = Store(Path(name) / "q.duckdb")
        batch = TaskBatch(template="true %{i}", groups=[[{"i": i} for i in range(2000)]])
        store.add_batch(batch)
        cost: dict[str, list[float]] = {
            "get": [],
            "launch": [],
            "run": [],
            "finish": [],
            "reasons": [],
            "tx": [],
        }
        with store.transaction() as tx:
            ids = [t.id for t in tx.pending_candidates(n)]
        for task_id in ids:
            with store.transaction() as tx:
                waiting = [t.id for t in tx.pending_candidates(64)]
                run = f"r{task_id}"
                t0 = time.perf_counter()
                tx.get(task_id)
                t1 = time.perf_counter()
                tx.move(task_id, S.LAUNCHING, host="h1", run_id=run, gpu_ids=[])
                t2 = time.perf_counter()
                tx.move(task_id, S.RUNNING, run_id=run)
                t3 = time.perf_counter()
                tx.move(task_id, S.SUCCEEDED, run_id=run, exit_code=0)
                t4 = time.perf_counter()
                tx.set_reasons({i: f"all slots busy {task_id}" for i in waiting})
                t5 = time.perf_counter()
            cost["get"].append(t1 - t0)
            cost["launch"].append(t2 - t1)
            cost["run"].append(t3 - t2)
            cost["finish"].append(t4 - t3)
            cost["reasons"].append(t5 - t4)
            t6 = time.perf_counter()
            with store.transaction() as tx:
                pass
            cost["tx"].append(time.perf_counter() - t6)
    per_task = Stats.of(
        [a + b + c for a, b, c in zip(cost["launch"], cost["run"], cost["finish"], strict=True)]
    )
    st = {k: Stats.of(v) for k, v in cost.items()}
    return Section(
        "Store cost per dispatched task (why throughput is limited)",
        "python3 bench/run.py --only store_ops",
        f"Wall time of single store calls inside one transaction on a 2,000-task queue file, {n}"
        " tasks. These are the calls `Dispatcher._tick` makes per task (`Txn.move` three times)"
        " and per tick (`Txn.set_reasons` on up to 64 waiting tasks).",
        [
            Row("`Txn.get` (one task by id)", st["get"], "s"),
            Row("`Txn.move` pending -> launching", st["launch"], "s"),
            Row("`Txn.move` launching -> running", st["run"], "s"),
            Row("`Txn.move` running -> succeeded (+ attempts row)", st["finish"], "s"),
            Row(
                "the three moves of one task",
                per_task,
                "s",
                vs=f"caps one core at {1 / per_task.median:.0f} tasks/s",
            ),
            Row("`Txn.set_reasons`, 64 waiting tasks, new reason", st["reasons"], "s"),
            Row("open + BEGIN + COMMIT + close, empty transaction", st["tx"], "s"),
        ],
    )
