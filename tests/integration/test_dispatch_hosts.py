"""Dispatch through ProxyJump and onto two hosts sharing one home; busy GPUs; exit codes."""

from __future__ import annotations

import os
import signal
import stat

from tests.integration.conftest import Lab, finish, wait
from tests.sshd import FakeApp, FakeGpu

ONE = '{"p1": 1, "p2": "a", "p3": 0}'


def test_a_host_behind_a_jump_host_runs_tasks(lab: Lab) -> None:
    hosts = lab.hosts_toml("behind")
    ids = lab.add("--grid", "p1=1,2", "--grid", "p2=a", "--grid", "p3=0")
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert {r["host"] for r in lab.records()} == {"behind"}
    assert [t["state"] for t in lab.tasks()] == ["succeeded"] * len(ids)


def test_two_hosts_sharing_one_home_never_collide(lab: Lab) -> None:
    assert lab.hosts.nfs1.home == lab.hosts.nfs2.home
    hosts = lab.hosts_toml("nfs1", "nfs2")
    # The first task holds its host's only GPU until the others ran: they must use the other host.
    (holder,) = lab.add("--args", ONE, sleep=60)
    proc = lab.start("dispatch", "--hosts", str(hosts))
    held_on = lab.wait_task(holder, ["running"])["host"]
    ids = lab.add("--grid", "p1=1,2,3,4", "--grid", "p2=b", "--grid", "p3=0")
    for i in ids:
        lab.wait_task(i, ["succeeded", "failed"])
    lab.ok("queue", "cancel", str(holder))
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    tasks = lab.tasks()
    assert [t["state"] for t in tasks] == ["cancelled"] + ["succeeded"] * len(ids)
    other = {"nfs1": "nfs2", "nfs2": "nfs1"}[held_on]
    assert {t["host"] for t in tasks[1:]} == {other}
    run_ids = [t["run_id"] for t in tasks]
    assert len(set(run_ids)) == len(run_ids)
    assert sorted(int(r["task_id"]) for r in lab.records()) == ids
    # Private on the host and on the controller.
    state_dir = lab.hosts.nfs1.home / ".labtasker"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    logs = lab.root / "queue.logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    for t in tasks[1:]:
        log = logs / f"{t['run_id']}.log"
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert "done score=" in log.read_text()


def test_a_failed_task_makes_dispatch_exit_1(lab: Lab) -> None:
    hosts = lab.hosts_toml("cpu")
    (bad,) = lab.add("--args", ONE, extra="--fail")
    (good,) = lab.add("--args", '{"p1": 2, "p2": "b", "p3": 0}')
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"task {bad} failed on cpu (exit 3)" in done.stdout
    assert "1 succeeded, 1 failed" in done.stdout
    assert lab.task(bad)["exit_code"] == 3 and lab.task(good)["state"] == "succeeded"
    assert "failing on purpose" in lab.ok("logs", str(bad))


def test_a_task_no_host_can_take_is_reported_not_waited_on(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu2", "gpu1")
    (big,) = lab.add("--args", ONE, "--gpus", "3")
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    expected = (
        f"task {big} cannot be placed: needs 3 GPUs on one host; the largest host (gpu2) has 2"
    )
    assert expected in done.stderr
    assert lab.task(big)["state"] == "pending"


def test_a_bad_hosts_file_exits_2(lab: Lab) -> None:
    hosts = lab.write_hosts('[hosts.gpu1]\ngpus = "many"\n')
    lab.add("--args", ONE)
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"{hosts}:2" in done.stderr and "gpus" in done.stderr


def test_a_gpu_busy_with_another_users_process_is_skipped(lab: Lab) -> None:
    host = lab.hosts.gpu2
    gpus = host.default_gpus()
    host.write_gpus([FakeGpu(0, gpus[0].uuid, memory_used=5000), gpus[1]])
    host.write_apps([FakeApp(gpus[0].uuid, os.getpid(), 5000)])
    hosts = lab.hosts_toml("gpu2")
    ids = lab.add("--grid", "p1=1,2,3", "--grid", "p2=a", "--grid", "p3=0")
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert {r["CUDA_VISIBLE_DEVICES"] for r in lab.records()} == {"1"}
    assert [lab.task(i)["gpus"] for i in ids] == [[1]] * 3

    # With the only free GPU gone too, the task waits with the reason, and dispatch says so.
    host.write_gpus([FakeGpu(0, gpus[0].uuid, memory_used=5000)])
    (waiting,) = lab.add("--args", '{"p1": 9, "p2": "z", "p3": 0}')
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    reason = lab.task(waiting)["reason"]
    assert reason.startswith("no free GPU"), reason
    assert f"4.9 GiB used by root (pid {os.getpid()})" in reason
    hint = "it stays pending; `labtasker dispatch --forever` waits until the GPU is free"
    assert f"task {waiting} cannot be placed: {reason}; {hint}" in done.stderr


def test_forever_waits_for_new_tasks_and_ctrl_c_leaves_them_running(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu1")
    (quick,) = lab.add("--args", ONE)  # first: dispatch refuses a queue that does not exist
    proc = lab.start("dispatch", "--hosts", str(hosts), "--forever")
    lab.wait_task(quick, ["succeeded"])
    assert proc.poll() is None  # nothing left to do: still waiting for new tasks
    (long,) = lab.add("--args", '{"p1": 2, "p2": "b", "p3": 0}', sleep=60)
    lab.wait_task(long, ["running"])
    assert proc.poll() is None  # nothing pending, nothing placeable: still waiting
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, (out, err)
    assert "Stopped launching. 1 task keeps running on its host" in out
    assert lab.task(long)["state"] == "running"
    runs = lab.hosts.gpu1.home / ".labtasker" / "runs" / lab.task(long)["run_id"]
    assert (runs / "started.json").exists() and not (runs / "exit.json").exists()
    lab.ok("queue", "cancel", str(long))  # a later dispatch stops it
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    wait(lambda: lab.task(long)["state"] == "cancelled", "cancelled")
