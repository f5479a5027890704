"""Connections dropped, sshd listeners down, partitions: tasks keep running on their hosts, the
dispatcher reconnects and collects them, and nothing is relaunched because a connection dropped."""

from __future__ import annotations

import signal
from typing import Any

from tests.integration.conftest import finish
from tests.integration.faults_lab import FaultLab, alive, connected, partition

HOSTS = ("gpu2", "gpu1", "cpu")


def _running_on(faults: FaultLab, host: str) -> list[dict[str, Any]]:
    return [t for t in faults.lab.tasks() if t["state"] == "running" and t["host"] == host]


def test_dropped_connections_mid_run_relaunch_nothing(faults: FaultLab) -> None:
    hosts = faults.hosts_toml(*HOSTS)
    ids = faults.add(15, sleep=1.0)
    proc = faults.dispatch(hosts)
    gpu2 = faults.lab.hosts.gpu2
    faults.wait(lambda: len(_running_on(faults, "gpu2")) == 2, "two tasks running on gpu2")
    before = {t["id"] for t in _running_on(faults, "gpu2")}
    gpu2.kill_connections()  # `sshd: USER@notty`: the session ends, the tasks do not
    faults.wait(lambda: connected(proc, gpu2), "the dispatcher reconnected to gpu2")
    gpu2.kill_connections()  # once more, while it may be in the middle of anything
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    done = faults.assert_exactly_once(ids)
    assert all(t["attempt"] == 1 for t in done)
    assert {t["id"] for t in done if t["host"] == "gpu2"} >= before
    assert "gpu2: connection lost; reconnecting" in out, out


def test_listener_down_for_a_while_then_back(faults: FaultLab) -> None:
    hosts = faults.hosts_toml(*HOSTS)
    ids = faults.add(8, sleep=2.0)
    proc = faults.dispatch(hosts)
    cpu = faults.lab.hosts.cpu
    faults.wait(lambda: len(_running_on(faults, "cpu")) == 2, "two tasks running on cpu")
    on_cpu = {t["id"]: t["run_id"] for t in _running_on(faults, "cpu")}
    cpu.stop_listener()
    cpu.kill_connections()  # reconnects are now refused
    # cpu's tasks finish while it is unreachable; the queue still says running, as last known.
    faults.wait(lambda: {s["task"] for s in faults.starts()} >= set(on_cpu), "cpu's tasks started")
    pids = [s["pid"] for s in faults.starts() if s["task"] in on_cpu]
    faults.wait(lambda: not any(map(alive, pids)), "cpu's tasks ended")
    assert all(faults.lab.task(i)["state"] == "running" for i in on_cpu)
    cpu.start_listener()
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    done = faults.assert_exactly_once(ids)
    for task in done:
        if task["id"] in on_cpu:
            assert task["run_id"] == on_cpu[task["id"]] and task["host"] == "cpu"


def test_partition_longer_than_keepalive_then_healed(faults: FaultLab) -> None:
    hosts = faults.hosts_toml("gpu1", "cpu")
    (held_id,) = faults.add(1, sleep=4.0, options=("--gpus", "1"))  # only gpu1 can run it
    others = faults.add(6, sleep=0.5, options=("--gpus", "0"))  # cpu's, meanwhile
    proc = faults.dispatch(hosts)
    gpu1 = faults.lab.hosts.gpu1
    held = faults.lab.wait_task(held_id, ["running"])
    faults.wait(lambda: faults.start_counts()[held_id] == 1, "its process started")
    (start,) = [s for s in faults.starts() if s["task"] == held_id]
    with partition(gpu1):
        # Keepalives (1 s x 3) notice the partition; the task stays running, its GPU reserved.
        faults.wait(lambda: not connected(proc, gpu1), "the dispatcher dropped gpu1")
        faults.wait(lambda: not alive(start["pid"]), "the task ended during the partition")
        assert faults.lab.task(held_id)["state"] == "running"
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    done = faults.assert_exactly_once([held_id, *others])
    assert done[0]["host"] == "gpu1" and done[0]["run_id"] == held["run_id"]
    assert "gpu1: connection lost; reconnecting" in out, out


def test_partition_past_lost_after_requeues_and_fences_the_old_run(faults: FaultLab) -> None:
    hosts = faults.hosts_toml("gpu1", "gpu2", lost_after=3)
    # gpu2 is filled first (priority), so the task under test lands on gpu1. Its first run
    # sleeps long, so it is still alive when gpu1 comes back.
    faults.add(1, sleep=1.0, options=("--gpus", "2", "--priority", "9"))
    (task_id,) = faults.add(1, sleep="60/0.3", options=("--gpus", "1"))
    proc = faults.dispatch(hosts, "--forever")
    gpu1 = faults.lab.hosts.gpu1
    first = faults.lab.wait_task(task_id, ["running"])
    assert first["host"] == "gpu1", first
    faults.wait(lambda: faults.start_counts()[task_id] == 1, "the first run started")
    (old,) = faults.starts()[-1:]
    with partition(gpu1):
        # Unreachable past lost_after: lost, requeued, and run again on gpu2.
        final = faults.lab.wait_task(task_id, ["succeeded"])
    assert final["host"] == "gpu2" and final["attempt"] == 2, final
    assert faults.losses(task_id) == 1
    assert [str(a.outcome) for a in faults.attempts(task_id)] == ["lost", "succeeded"]
    # gpu1 answers again: the old run, alive all along, is fenced off by its run id: killed.
    faults.wait(lambda: connected(proc, gpu1), "the dispatcher reconnected to gpu1")
    faults.wait(lambda: not alive(old["pid"]), "the old run was killed")
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, (out, err)  # interrupted --forever
    final = faults.lab.task(task_id)
    assert final["state"] == "succeeded", final
    assert final["result"] == {"task": task_id, "run": final["run_id"]}  # the new run's, alone
    assert final["run_id"] != first["run_id"]
    assert faults.start_counts()[task_id] == 2
    assert "lost on gpu1: host unreachable" in out, out
