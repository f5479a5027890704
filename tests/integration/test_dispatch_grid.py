"""End to end: the seed's 4 x 4 x 4 grid through the real CLI on gpu2, gpu1 and cpu."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from tests.integration.conftest import Lab

GRID = ("p1=1,2,3,4", "p2=a,b,c,d", "p3=0.1,0.2,0.3,0.4")


def overlaps(runs: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """Pairs of runs whose [start, end] intervals intersect."""
    runs = sorted(runs, key=lambda r: r["start"])
    return [
        (a["task_id"], b["task_id"])
        for a, b in itertools.combinations(runs, 2)
        if b["start"] < a["end"] and a["start"] < b["end"]
    ]


def test_grid_runs_everywhere_and_never_shares_a_gpu(lab: Lab) -> None:
    ids = lab.add(*(f"--grid={g}" for g in GRID), sleep=0.15)
    assert len(ids) == 64
    hosts = lab.hosts_toml("gpu2", "gpu1", "cpu")
    done = lab.run("dispatch", "--hosts", str(hosts), timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "64 succeeded, 0 failed" in done.stdout

    records = lab.records()
    assert sorted(int(r["task_id"]) for r in records) == sorted(ids)
    by_gpu: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["host"] == "cpu":
            assert r["CUDA_VISIBLE_DEVICES"] == ""
        else:
            assert r["CUDA_VISIBLE_DEVICES"] in {"gpu2": {"0", "1"}, "gpu1": {"0"}}[r["host"]]
            by_gpu[(r["host"], r["CUDA_VISIBLE_DEVICES"])].append(r)
    for key, runs in by_gpu.items():
        assert overlaps(runs) == [], f"two tasks shared GPU {key}"
    cpu_runs = [r for r in records if r["host"] == "cpu"]
    for r in cpu_runs:  # never more than its 2 slots at once
        assert sum(1 for o in cpu_runs if o["start"] <= r["start"] < o["end"]) <= 2
    assert {r["host"] for r in records} == {"gpu2", "gpu1", "cpu"}

    tasks = lab.cli_tasks()
    assert {t["state"] for t in tasks} == {"succeeded"}
    for t in tasks:
        p1, p2, p3 = (str(t["args"][k]) for k in ("p1", "p2", "p3"))
        assert t["result"] == {"score": len(p1) + len(p2) + len(p3), "params": [p1, p2, p3]}
        assert t["exit_code"] == 0 and t["host"] in {"gpu2", "gpu1", "cpu"}
    # Logs come from the controller's copy: no host is named in a hosts file here.
    some = tasks[5]
    log = lab.ok("logs", str(some["id"]), "--hosts", "missing.toml")
    assert f"starting param1={some['args']['p1']}" in log and "done score=" in log
