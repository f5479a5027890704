"""Latency (benchmark 3): queue add -> task started on an idle slot; task exit -> recorded.

``dispatch --forever`` runs over 4 sshd hosts; tasks are added one at a time through the Python
API (``Queue.add``) and each is awaited before the next, so a slot is always idle. The start time
is the helper's own record of spawning the task; "recorded" is when another process first sees
the finished state in the queue file (checked every 2 ms via its change token).
"""

from __future__ import annotations

import subprocess
import time

from common import (
    BenchHosts,
    Config,
    Row,
    Section,
    Stats,
    bench_hosts,
    cli_argv,
    cli_env,
    interrupt,
)

from dispatcher.api import Queue
from dispatcher.core.models import TaskState
from dispatcher.store.queue import Store

HOSTS, SLOTS = 4, 8
POLL = 0.002


def wait_finished(store: Store, task_id: int, timeout: float = 60.0) -> tuple[float, object]:
    """Poll until the task is finished; (wall clock when first seen, the task)."""
    deadline = time.monotonic() + timeout
    token: tuple[int, ...] | None = None
    while time.monotonic() < deadline:
        now_token = store.change_token()
        if now_token != token:
            token = now_token
            task = store.tasks(ids=[task_id])[0]
            if task.state in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.LOST):
                return time.time(), task
        time.sleep(POLL)
    raise SystemExit(f"task {task_id} not finished within {timeout:g} s; see the dispatch log")


def measure(bh: BenchHosts, n: int) -> tuple[list[float], list[float]]:
    """Start latencies and exit-to-recorded latencies (seconds) of ``n`` tasks."""
    db = bh.work / "latency.duckdb"
    queue, store = Queue(db), Store(db, lock_timeout=60)
    queue.add("true")  # dispatch needs a queue to exist; this first task is a warm-up too
    log = (bh.work / "latency-dispatch.log").open("w")
    proc = subprocess.Popen(
        cli_argv(db, "dispatch", "--forever", "--hosts", str(bh.hosts_toml())),
        env=cli_env(bh.home),
        cwd=bh.work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    starts, records = [], []
    try:
        for i in range(n + 4):  # the first tasks warm up the connections
            [task_id] = queue.add(f"true {i}")
            added = time.time()
            seen, task = wait_finished(store, task_id)
            assert task.started_at is not None and task.finished_at is not None  # type: ignore[attr-defined]
            if i >= 4:
                starts.append(task.started_at.timestamp() - added)  # type: ignore[attr-defined]
                records.append(seen - task.finished_at.timestamp())  # type: ignore[attr-defined]
    finally:
        interrupt(proc, 30)
        log.close()
    return starts, records


def run(cfg: Config) -> Section:
    """p50/p95 of both latencies."""
    n = cfg.pick(200, 40)
    with bench_hosts(HOSTS, SLOTS, "latency") as bh:
        starts, records = measure(bh, n)
    s, r = Stats.of(starts), Stats.of(records)
    section = Section(
        "Latency",
        "python3 bench/run.py --only latency",
        f"`labtasker dispatch --forever` on {HOSTS} sshd hosts with {SLOTS} idle slots each; {n}"
        " tasks (`true`) added one at a time with `Queue(db).add(...)`, each awaited before the"
        " next. Start: from `add` returning (committed) to the helper spawning the task (its"
        " `started_at`). Recorded: from the task's exit (`finished_at`, the helper's clock; same"
        f" machine) to another process seeing it finished in the queue file (polled every"
        f" {POLL * 1000:.0f} ms). Median/min/max are over the {n} tasks.",
    )
    p95s, p95r = s.quantile(0.95), r.quantile(0.95)
    section.rows += [
        Row(
            "add -> started (median = p50)",
            s,
            "s",
            vs=f"p95 {p95s * 1000:.0f} ms",
            target="p50 <= 200 ms",
            met=s.median <= 0.2,
        ),
        Row(
            "exit -> recorded (median = p50)",
            r,
            "s",
            vs=f"p95 {p95r * 1000:.0f} ms",
            target="p95 <= 1 s",
            met=p95r <= 1.0,
        ),
    ]
    return section


def main() -> None:
    """Quick runs while tuning: ``python3 bench/latency.py -n 40``."""
    import argparse

    parser = argparse.ArgumentParser(description="labtasker start and record latency")
    parser.add_argument("-n", type=int, default=40, help="tasks (default 40)")
    opts = parser.parse_args()
    with bench_hosts(HOSTS, SLOTS, "latency") as bh:
        starts, records = measure(bh, opts.n)
    for label, values in (("add -> started", starts), ("exit -> recorded", records)):
        s = Stats.of(values)
        print(
            f"{label}: p50 {s.median * 1000:.0f} ms, p95 {s.quantile(0.95) * 1000:.0f} ms"
            f" (min {s.lo * 1000:.0f}, max {s.hi * 1000:.0f}, n={s.n})"
        )


if __name__ == "__main__":
    main()
