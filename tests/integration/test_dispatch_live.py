"""Queue edits from another terminal while ``labtasker dispatch`` runs: add, cancel, priority."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.conftest import Lab, finish, wait


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (all test hosts live on this machine)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_task_added_during_dispatch_runs(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu1")
    (first,) = lab.add("--args", '{"p1": 1, "p2": "a", "p3": 0}', sleep=1.0)
    proc = lab.start("dispatch", "--hosts", str(hosts))
    lab.wait_task(first, ["running"])
    (second,) = lab.add("--args", '{"p1": 2, "p2": "b", "p3": 0}')
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    assert lab.task(first)["state"] == lab.task(second)["state"] == "succeeded"
    assert {int(r["task_id"]) for r in lab.records()} == {first, second}


def test_cancel_kills_the_running_process_on_its_host(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu2")
    (long,) = lab.add("--args", '{"p1": 1, "p2": "a", "p3": 0}', sleep=60)
    proc = lab.start("dispatch", "--hosts", str(hosts))
    lab.wait_task(long, ["running"])
    # Live output comes from the host while the task runs; it names the task's pid.
    line = wait(lambda: lab.run("logs", str(long), "--hosts", str(hosts)).stdout, "first output")
    match = re.search(r"\(pid (\d+)\)", str(line))
    assert match, line
    pid = int(match.group(1))
    assert pid_alive(pid)
    lab.ok("queue", "cancel", str(long))
    task = lab.wait_task(long, ["cancelled"])
    assert task["reason"] == "cancelled by user"
    wait(lambda: not pid_alive(pid), f"task process {pid} gone")
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    assert "cancelling on gpu2" in out
    assert lab.records() == []  # killed before it could record anything


def test_raising_a_priority_during_dispatch_changes_the_order(lab: Lab) -> None:
    # One GPU, held by a blocker until the test cancels it: the order of the two waiting tasks is
    # decided only after the priority change, so it cannot come out right by luck.
    hosts = lab.hosts_toml("gpu1")
    (blocker,) = lab.add("--args", '{"p1": 0, "p2": "x", "p3": 0}', sleep=60)
    proc = lab.start("dispatch", "--hosts", str(hosts))
    lab.wait_task(blocker, ["running"])
    (early,) = lab.add("--args", '{"p1": 1, "p2": "a", "p3": 0}')
    (late,) = lab.add("--args", '{"p1": 2, "p2": "b", "p3": 0}')

    def both_waiting() -> bool:  # the dispatcher has seen both and explains why they wait
        return all((lab.task(t)["reason"] or "").startswith("no free GPU") for t in (early, late))

    wait(both_waiting, "pending reasons of both tasks")
    assert "gpu1" in lab.task(early)["reason"] and f"task {blocker}" in lab.task(early)["reason"]
    lab.ok("queue", "update", str(late), "--priority", "10")
    lab.ok("queue", "cancel", str(blocker))
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    runs = {int(r["task_id"]): r for r in lab.records()}
    assert runs[late]["end"] <= runs[early]["start"], runs
    started = {t["id"]: t["started_at"] for t in lab.tasks()}
    assert started[late] < started[early]
    assert lab.task(blocker)["state"] == "cancelled"
