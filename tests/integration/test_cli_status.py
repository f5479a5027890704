"""``labtasker status`` and ``labtasker logs`` through the CLI while a dispatcher runs."""

from __future__ import annotations

import json
import re

from dispatcher.core.models import TaskState
from dispatcher.core.words import EMPTY_QUEUE
from dispatcher.store.queue import Store
from tests.integration.conftest import Lab, finish, wait


def normalise(text: str) -> str:
    """Elapsed times and pids change from run to run; padding follows their widths."""
    text = re.sub(r"\b\d+(m\d\d)?s\b", "Ts", text)
    text = re.sub(r"\(pid \d+\)", "(pid N)", text)
    return "\n".join(re.sub(r" {2,}", "  ", line).strip() for line in text.splitlines())


def test_status_shows_running_tasks_with_their_last_output(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu2", "cpu")
    Store(lab.db).counts()  # a queue without tasks
    assert normalise(lab.ok("status")) == f"Nothing is running.\n{EMPTY_QUEUE}"
    # --gpus 0 needs a slot: only cpu has slots, so the placement does not depend on which host
    # connects first.
    (named,) = lab.add(
        "--args", '{"p1": 1, "p2": "a", "p3": 0}', "--name", "long", "--gpus", "0", sleep=60
    )
    lab.add("--args", '{"p1": 2, "p2": "b", "p3": 0}', "--gpus", "2", sleep=60)
    lab.add("--args", '{"p1": 3, "p2": "c", "p3": 0}', "--gpus", "2", sleep=60)  # waits
    proc = lab.start("dispatch", "--hosts", str(hosts))
    try:
        # The dispatcher fetches last lines every few seconds: wait until it has both.
        shown = wait(
            lambda: (out := lab.ok("status")).count("starting param1=") == 2 and out,
            "last output lines in status",
        )
        lines = normalise(str(shown)).split("\n")
        assert lines[:4] == [
            "id  name  host  gpu  elapsed  args  last output",
            "1  long  cpu  Ts  p1=1 p2=a p3=0  starting param1=1 param2=a param3=0 (pid N)",
            "2  gpu2  0,1  Ts  p1=2 p2=b p3=0  starting param1=2 param2=b param3=0 (pid N)",
            "2 running · 1 pending",
        ]
        # Once the dispatcher has planned, the pending task says why it waits.
        assert all(line.startswith("1 pending: needs 2 free GPUs") for line in lines[4:]), lines
        running = json.loads(lab.ok("status", "--json"))
        assert [(t["id"], t["host"], t["gpus"], t["state"]) for t in running] == [
            (1, "cpu", [], "running"),
            (2, "gpu2", [0, 1], "running"),
        ]
        assert running[0]["name"] == "long" and running[0]["started_at"]
    finally:
        lab.ok("queue", "cancel", "1", "2", "3")
        code, out, err = finish(proc)
    assert code == 0, (out, err)
    assert normalise(lab.ok("status")) == "Nothing is running.\n3 cancelled"
    assert lab.task(named)["state"] == "cancelled"


def test_logs_follow_streams_from_the_host_until_the_task_ends(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu1")
    (task,) = lab.add("--args", '{"p1": 7, "p2": "q", "p3": 0}', sleep=3)
    proc = lab.start("dispatch", "--hosts", str(hosts))
    lab.wait_task(task, ["running"])
    follow = lab.start("logs", str(task), "--follow", "--hosts", str(hosts))
    code, out, err = finish(follow)
    assert code == 0, err
    assert out.startswith("starting param1=7 param2=q param3=0") and "done score=3" in out
    code, _, err = finish(proc)
    assert code == 0, err
    assert lab.ok("logs", str(task)) == out  # the collected copy says the same


def test_a_task_that_printed_nothing_has_empty_logs_and_no_log_file(lab: Lab) -> None:
    hosts = lab.hosts_toml("cpu")
    (task,) = lab.add_cmd("true", "--args", "{}")
    code, _, err = finish(lab.start("dispatch", "--hosts", str(hosts)))
    assert code == 0, err
    assert lab.task(task)["state"] == "succeeded"
    done = lab.run("logs", str(task))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    logs = lab.root / "queue.logs"
    assert not (logs.exists() and any(logs.iterdir()))  # no file kept for an empty log


def test_a_lost_task_without_a_copy_of_its_log_says_so(lab: Lab) -> None:
    (task,) = lab.add_cmd("true", "--args", "{}")
    with Store(lab.db).transaction() as tx:
        tx.move(task, TaskState.LAUNCHING, run_id=f"t{task}-a1-x", host="cpu")
        tx.move(task, TaskState.LOST, run_id=f"t{task}-a1-x", reason="lost on cpu")
    done = lab.run("logs", str(task))
    assert done.returncode != 0 and "has no output yet (state lost)" in done.stderr, done
