"""The controller dies (kill -9) mid-run or between placing a task and starting it; a restarted
dispatch reconciles: running tasks are adopted, ended ones collected, nothing starts twice."""

from __future__ import annotations

from collections import Counter

from dispatcher.dispatch.recovery import CRASH_ENV
from tests.integration.faults_lab import FaultLab, kill9

HOSTS = ("gpu2", "gpu1", "cpu")  # 2 + 1 GPUs and 2 CPU slots: 5 tasks at once


def test_kill_9_mid_run_then_restart_loses_and_repeats_nothing(faults: FaultLab) -> None:
    hosts = faults.hosts_toml(*HOSTS)
    ids = faults.add(24, sleep=0.8)
    proc = faults.dispatch(hosts)
    # Mid-run: some tasks done, some running on every kind of host.
    faults.wait(
        lambda: faults.count_in("succeeded") >= 6 and faults.count_in("running") >= 3,
        "some tasks done and others running",
    )
    kill9(proc)
    running = {t["id"]: t for t in faults.lab.tasks() if t["state"] in ("running", "launching")}
    assert running, "the kill came after the queue drained"
    # The orphaned tasks keep running on their hosts while no controller exists.
    faults.wait(
        lambda: all(faults.start_counts()[i] == 1 for i in running),
        "the in-flight tasks started on their hosts",
    )
    code, out, err = faults.run_dispatch(hosts)
    assert code == 0, (out, err)
    # Each host that held runs says how many it answered for, once reconciled.
    for host, n in Counter(t["host"] for t in running.values()).items():
        assert f"{host}: {n} run{'' if n == 1 else 's'} re-adopted\n" in out, out
    done = faults.assert_exactly_once(ids)
    # Adopted, not relaunched: the in-flight tasks kept their run (and attempt 1).
    for task in done:
        if task["id"] in running:
            assert task["run_id"] == running[task["id"]]["run_id"], task
        assert task["attempt"] == 1, task
    assert {t["host"] for t in done} == set(HOSTS)


def test_kill_after_place_before_launch_launches_exactly_once(faults: FaultLab) -> None:
    hosts = faults.hosts_toml(*HOSTS)
    ids = faults.add(8, sleep=0.3)
    # The test hook makes dispatch exit right after the `launching` transaction commits and
    # before any launch is sent: the worst moment for a controller to die.
    code, out, err = faults.run_dispatch(hosts, env={CRASH_ENV: "1"})
    assert code == 99, (code, out, err)
    launching = [t for t in faults.lab.tasks() if t["state"] == "launching"]
    # (How many depends on which hosts had answered by the first placement.)
    assert launching and all(t["run_id"] and t["host"] for t in launching), launching
    assert not faults.starts(), "the hook must fire before any launch is sent"
    code, out, err = faults.run_dispatch(hosts)
    assert code == 0, (out, err)
    done = faults.assert_exactly_once(ids)
    by_id = {t["id"]: t for t in done}
    for task in launching:
        # Resolved by asking the host: the same run id was launched, once.
        assert by_id[task["id"]]["run_id"] == task["run_id"]


def test_kill_after_launch_sent_before_start_recorded_launches_exactly_once(
    faults: FaultLab,
) -> None:
    hosts = faults.hosts_toml(*HOSTS)
    ids = faults.add(8, sleep=0.3)
    # Crash after the launches went out but before their replies were recorded: the hosts
    # started the runs, the queue still says `launching`.
    code, out, err = faults.run_dispatch(hosts, env={CRASH_ENV: "sent"})
    assert code == 99, (code, out, err)
    launching = [t for t in faults.lab.tasks() if t["state"] == "launching"]
    assert launching, faults.lab.tasks()
    faults.wait(lambda: len(faults.starts()) >= len(launching), "the sent launches started")
    code, out, err = faults.run_dispatch(hosts)
    assert code == 0, (out, err)
    faults.assert_exactly_once(ids)


def test_a_second_dispatcher_on_the_same_queue_is_refused(faults: FaultLab) -> None:
    hosts = faults.hosts_toml("cpu")
    faults.add(1, sleep=30)
    first = faults.dispatch(hosts)
    faults.wait(lambda: faults.count_in("running") == 1, "the first dispatcher runs a task")
    second = faults.lab.run("dispatch", "--hosts", str(hosts))
    assert second.returncode == 2, (second.stdout, second.stderr)
    assert "another dispatcher" in second.stderr and f"pid {first.pid}" in second.stderr
    kill9(first)
