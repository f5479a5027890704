"""Hosts that crash or break: their tasks are lost and requeued elsewhere (never counted as the
task's failure), a crashed host gets work again when it returns, a broken one is suspended."""

from __future__ import annotations

import signal

from dispatcher.store.queue import Store
from dispatcher.store.suspensions import suspend_host
from tests.integration.conftest import finish
from tests.integration.faults_lab import FaultLab, connected

HOSTS = ("gpu2", "gpu1", "cpu")


def _assert_lost_once_then_done(faults: FaultLab, ids: list[int], lost: set[int]) -> None:
    """Tasks in ``lost`` ran twice (the lost run, then the one that counted); others once."""
    counts = faults.start_counts()
    for task in faults.lab.tasks():
        if task["id"] not in ids:
            continue
        assert task["state"] == "succeeded", task
        assert task["result"] == {"task": task["id"], "run": task["run_id"]}, task
        if task["id"] in lost:
            assert counts[task["id"]] == 2, task
            outcomes = [str(a.outcome) for a in faults.attempts(task["id"])]
            assert outcomes == ["lost", "succeeded"], (task, outcomes)
            assert faults.losses(task["id"]) == 1
        else:
            assert counts[task["id"]] == 1, task


def test_host_crash_tasks_lost_requeued_elsewhere_and_host_returns(faults: FaultLab) -> None:
    hosts = faults.hosts_toml(*HOSTS, lost_after=3)
    ids = faults.add(12, sleep=1.0)
    proc = faults.dispatch(hosts, "--forever")
    gpu1 = faults.lab.hosts.gpu1
    crashed = faults.wait(
        lambda: [t for t in faults.lab.tasks() if t["state"] == "running" and t["host"] == "gpu1"],
        "a task running on gpu1",
    )
    assert isinstance(crashed, list)
    faults.wait(lambda: faults.start_counts()[crashed[0]["id"]] == 1, "its process started")
    gpu1.stop_listener()
    gpu1.kill_user_processes()  # the host "crashes": tasks, helper and sessions all gone
    lost = {crashed[0]["id"]}
    faults.wait(
        lambda: all(faults.lab.task(i)["state"] == "succeeded" for i in ids), "all tasks done"
    )
    _assert_lost_once_then_done(faults, ids, lost)
    assert all(faults.lab.task(i)["host"] != "gpu1" for i in lost)
    # The host comes back and gets work again.
    gpu1.start_listener()
    faults.wait(lambda: connected(proc, gpu1), "the dispatcher reconnected to gpu1")
    more = faults.add(6, sleep=1.0)
    faults.wait(
        lambda: all(faults.lab.task(i)["state"] == "succeeded" for i in more), "new tasks done"
    )
    assert "gpu1" in {faults.lab.task(i)["host"] for i in more}
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    assert "lost on gpu1: host unreachable for more than 3s" in out, out
    _assert_lost_once_then_done(faults, ids + more, lost)


def test_host_crash_and_quick_return_probe_finds_the_runs_lost(faults: FaultLab) -> None:
    hosts = faults.hosts_toml("gpu1", "cpu", lost_after=600)  # the grace never expires here
    (task_id,) = faults.add(1, sleep="60/0.3", options=("--gpus", "1"))
    proc = faults.dispatch(hosts)
    gpu1 = faults.lab.hosts.gpu1
    faults.lab.wait_task(task_id, ["running"])
    faults.wait(lambda: faults.start_counts()[task_id] == 1, "its process started")
    gpu1.stop_listener()
    gpu1.kill_user_processes()
    gpu1.start_listener()  # a fast reboot: the host answers, the run's process is gone
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    assert "lost on gpu1: its process vanished" in out, out
    _assert_lost_once_then_done(faults, [task_id], {task_id})


def test_a_broken_host_is_suspended_while_the_others_drain_the_queue(faults: FaultLab) -> None:
    # gpu1's setup line fails (a missing venv, say): every task there exits 7 at once.
    hosts = faults.hosts_toml(
        *HOSTS, suspend_after_failures=3, per_host={"gpu1": {"setup": "exit 7"}}
    )
    ids = faults.add(12, sleep=0.3, options=("--max-attempts", "5"))
    code, out, err = faults.run_dispatch(hosts)
    assert code == 0, (out, err)
    faults.assert_exactly_once(ids)  # retried elsewhere; gpu1's runs never reached the script
    failed_on_gpu1 = [
        a
        for i in ids
        for a in faults.attempts(i)
        if a.host == "gpu1" and str(a.outcome) == "failed"
    ]
    assert len(failed_on_gpu1) == 3 and all(a.exit_code == 7 for a in failed_on_gpu1)
    assert all(t["host"] != "gpu1" for t in faults.lab.tasks())
    assert "gpu1: suspended after 3 failures in a row" in out, out
    # Visible to every process, until `hosts resume` lifts it.
    status = faults.lab.ok("status")
    assert "host gpu1 suspended after 3 failures in a row" in status, status
    assert faults.lab.ok("hosts", "resume", "gpu1").strip() == "gpu1: resumed"
    assert "suspended" not in faults.lab.ok("status")
    again = faults.lab.run("hosts", "resume", "gpu1")
    assert again.returncode == 2 and "not suspended: gpu1" in again.stderr, again


def test_restarting_dispatch_lifts_a_suspension(faults: FaultLab) -> None:
    hosts = faults.hosts_toml("gpu1")
    ids = faults.add(2, sleep=0.1)
    with Store(faults.lab.db).transaction() as tx:
        suspend_host(tx, "gpu1", "suspended after 5 failures in a row")
    assert "host gpu1 suspended" in faults.lab.ok("status")
    code, out, err = faults.run_dispatch(hosts)
    assert code == 0, (out, err)
    assert "gpu1: suspension lifted (dispatch restarted)" in out, out
    faults.assert_exactly_once(ids)
    assert "suspended" not in faults.lab.ok("status")


def test_hosts_resume_reaches_a_running_dispatcher(faults: FaultLab) -> None:
    broken = faults.lab.shared / "gpu1-broken"
    broken.touch()
    hosts = faults.hosts_toml(
        "gpu1",
        "cpu",
        suspend_after_failures=2,
        per_host={"gpu1": {"setup": f"test ! -e {broken}"}},
    )
    ids = faults.add(6, sleep=0.3, options=("--max-attempts", "5"))
    proc = faults.dispatch(hosts, "--forever")
    faults.wait(
        lambda: "host gpu1 suspended after 2 failures" in faults.lab.ok("status"),
        "gpu1 suspended, as `status` shows",
    )
    faults.wait(lambda: faults.count_in("succeeded") == len(ids), "cpu drained the queue")
    broken.unlink()  # the host is fixed
    assert faults.lab.ok("hosts", "resume", "gpu1").strip() == "gpu1: resumed"
    (gpu_task,) = faults.add(1, sleep=0.1, options=("--gpus", "1"))  # only gpu1 can run it
    done = faults.lab.wait_task(gpu_task, ["succeeded", "failed"])
    assert done["state"] == "succeeded" and done["host"] == "gpu1", done
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    assert "gpu1: resumed; placing tasks there again" in out, out
    faults.assert_exactly_once([*ids, gpu_task])
