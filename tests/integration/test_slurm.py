"""SLURM clusters as hosts (``kind = "slurm"``), against a real slurmctld and slurmd.

The cluster is ``tests/slurm.py``'s: one node with 16 CPUs and 4 fake GPUs, MaxArraySize 8, its
login node an sshd test host. Every task goes through the real CLI: ``queue add``, ``dispatch``,
``queue ls --json``; SLURM's own view is read with ``squeue`` as root.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.conftest import Lab, finish, wait
from tests.integration.faults_lab import kill9
from tests.slurm import SlurmCluster

SLEEPER = "sleep %{s}; echo slept %{s}"


@pytest.fixture
def cluster(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    slurm_cluster.wait_idle()
    yield slurm_cluster
    for job in slurm_cluster.jobs():  # a failed test's jobs must not hold the node
        slurm_cluster.admin("scancel", job.split("|")[0], check=False)


def cluster_hosts(lab: Lab, cluster: SlurmCluster, **extra: object) -> Path:
    settings = {"kind": "slurm", "workdir": f"{lab.shared}/cluster", "gres": cluster.gres,
                "poll_interval": "5s", "keepalive_interval": 1, **extra}  # fmt: skip
    lines = ["[hosts.slurm]", 'env = { EXPERIMENT_HOST = "slurm" }']
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    return lab.write_hosts("\n".join(lines) + "\n")


def test_a_grid_runs_as_job_arrays_split_at_max_array_size(lab: Lab, cluster: SlurmCluster) -> None:
    ids = lab.add(
        "--grid=p1=1,2,3,4", "--grid=p2=a,b,c,d", '--args={"p3": 0.5}', "--gpus", "1", sleep=0.2
    )
    hosts = cluster_hosts(lab, cluster)
    done = lab.run("dispatch", "--hosts", str(hosts), timeout=180)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "16 succeeded, 0 failed" in done.stdout
    tasks = lab.cli_tasks()
    assert sorted(t["id"] for t in tasks) == sorted(ids)
    assert {t["state"] for t in tasks} == {"succeeded"}
    jobs = {t["job_id"].split("_")[0] for t in tasks}
    assert len(jobs) == 2, jobs  # 16 tasks, at most 8 per array
    assert all(t["result"]["params"][0] == str(t["args"]["p1"]) for t in tasks)
    records = lab.records()
    assert sorted(int(r["task_id"]) for r in records) == sorted(ids)  # each ran exactly once
    assert all(r["CUDA_VISIBLE_DEVICES"] for r in records)  # SLURM gave each its GPU


def job_states(cluster: SlurmCluster) -> dict[str, str]:
    return dict(line.split("|", 1) for line in cluster.jobs())


def test_max_running_holds_across_arrays(lab: Lab, cluster: SlurmCluster) -> None:
    ids = lab.add("--grid=p1=1,2,3,4,5,6", '--args={"p2": "x", "p3": 1}', "--gpus", "0",
                  "--max-running", "2", sleep=1.0)  # fmt: skip
    done = lab.run("dispatch", "--hosts", str(cluster_hosts(lab, cluster)), timeout=180)
    assert done.returncode == 0, (done.stdout, done.stderr)
    runs = lab.records()
    assert sorted(int(r["task_id"]) for r in runs) == sorted(ids)
    for r in runs:  # never more than 2 at once, though the cluster had room for all 6
        assert sum(1 for o in runs if o["start"] <= r["start"] < o["end"]) <= 2


def test_pending_reasons_show_and_cancel_scancels_every_job(
    lab: Lab, cluster: SlurmCluster
) -> None:
    # 4 GPUs: the fifth task waits in SLURM for Resources, the sixth (another array) behind it
    # for Priority; each says so in `queue ls` and `status`.
    ids = lab.add_cmd(SLEEPER, "--grid=s=300,301,302,303,304", "--gpus", "1")
    ids += lab.add_cmd(SLEEPER, '--args={"s": 305}', "--gpus", "2")
    proc = lab.start("dispatch", "--hosts", str(cluster_hosts(lab, cluster)))
    wait(lambda: sum(t["job_id"] is not None for t in lab.tasks()) == 6, "6 jobs submitted")

    def reasons() -> dict[int, str] | None:
        got = {t["id"]: t["reason"] for t in lab.tasks() if t["reason"]}
        return got if len(got) == 2 else None

    waiting = wait(reasons, "SLURM's pending reasons on two tasks", timeout=60)
    assert isinstance(waiting, dict)
    jobs = {t["id"]: t["job_id"] for t in lab.tasks()}
    assert waiting == {
        ids[4]: f"SLURM job {jobs[ids[4]]} pending (Resources)",
        ids[5]: f"SLURM job {jobs[ids[5]]} pending (Priority)",
    }
    assert "pending (Resources)" in lab.ok("queue", "ls")
    assert f"{jobs[ids[5]]} pending (Priority)" in lab.ok("status")
    lab.ok("queue", "cancel", *map(str, ids))
    code, out, err = finish(proc, timeout=120)
    assert code == 0, (out, err)
    assert {t["state"] for t in lab.tasks()} == {"cancelled"}
    wait(lambda: not job_states(cluster), "SLURM has no job of ours left")


def test_a_lost_sbatch_reply_is_never_submitted_twice(lab: Lab, cluster: SlurmCluster) -> None:
    # sbatch queues the job, then fails as if its reply timed out: labtasker must look first.
    shim = lab.shared / "shim"
    shim.mkdir()
    calls = lab.shared / "sbatch-calls"
    (shim / "sbatch").write_text(
        "#!/bin/sh\n"
        f"echo call >> {calls}\n"
        "PATH=${PATH#*:} sbatch \"$@\" >/dev/null\n"
        "echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv' >&2\n"
        "exit 1\n"
    )  # fmt: skip
    python = lab.shared / "python-with-shim"
    python.write_text(f'#!/bin/sh\nPATH={shim}:$PATH exec python3 "$@"\n')
    for f in (shim / "sbatch", python):
        f.chmod(0o755)
    ids = lab.add("--grid=p1=1,2", '--args={"p2": "x", "p3": 1}', "--gpus", "0")
    hosts = cluster_hosts(lab, cluster, python=str(python))
    done = lab.run("dispatch", "--hosts", str(hosts), timeout=180)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert calls.read_text().count("call") == 1  # one array for both, submitted once
    assert sorted(int(r["task_id"]) for r in lab.records()) == sorted(ids)
    assert all(t["attempt"] == 1 and t["state"] == "succeeded" for t in lab.tasks())


def test_a_requeued_job_counts_as_lost_and_is_retried(lab: Lab, cluster: SlurmCluster) -> None:
    (task_id,) = lab.add_cmd("echo start $LABTASKER_RUN_ID; sleep %{s}", '--args={"s": 8}')
    proc = lab.start("dispatch", "--hosts", str(cluster_hosts(lab, cluster)))
    # Its task started (its first line is out): a requeue now kills a run that began.
    wait(lambda: "start" in lab.run("logs", str(task_id)).stdout, "the task started")
    first = lab.task(task_id)
    assert isinstance(first, dict)
    cluster.admin("scontrol", "requeue", first["job_id"])
    code, out, err = finish(proc, timeout=120)
    assert code == 0, (out, err)
    assert f"SLURM job {first['job_id']} was requeued" in out
    task = lab.task(task_id)
    assert task["state"] == "succeeded" and task["run_id"] != first["run_id"]
    assert task["job_id"] is None or task["job_id"] != first["job_id"]
    shown = json.loads(lab.ok("queue", "show", str(task_id), "--json"))
    first_try, second_try = shown["attempts"]
    assert first_try["run_id"] == first["run_id"] and "was requeued" in first_try["reason"]
    assert second_try["run_id"] == task["run_id"] and second_try["exit_code"] == 0


def test_controller_kill_9_then_reattach_by_job_id(lab: Lab, cluster: SlurmCluster) -> None:
    ids = lab.add("--grid=p1=1,2,3,4,5,6", '--args={"p2": "x", "p3": 1}', "--gpus", "1", sleep=6)
    hosts = cluster_hosts(lab, cluster)
    proc = lab.start("dispatch", "--hosts", str(hosts))
    wait(lambda: sum(t["state"] == "running" for t in lab.tasks()) == 6, "all 6 submitted")
    kill9(proc)
    held = {t["id"]: t["job_id"] for t in lab.tasks()}
    done = lab.run("dispatch", "--hosts", str(hosts), timeout=180)
    assert done.returncode == 0, (done.stdout, done.stderr)
    tasks = lab.tasks()
    assert {t["state"] for t in tasks} == {"succeeded"}
    assert all(t["attempt"] == 1 for t in tasks)  # adopted, not submitted again
    assert sorted(int(r["task_id"]) for r in lab.records()) == sorted(ids)  # each ran once
    assert all(held[i] for i in ids)


def test_timeout_is_exact_and_the_slurm_time_limit_kills_too(
    lab: Lab, cluster: SlurmCluster
) -> None:
    short = lab.add_cmd(SLEEPER, '--args={"s": 60}', "--timeout", "2")
    (long,) = lab.add_cmd(SLEEPER, '--args={"s": 300}')
    hosts = cluster_hosts(lab, cluster, time="10m")
    proc = lab.start("dispatch", "--hosts", str(hosts))
    job = wait(lambda: (lambda t: t["job_id"] if t["state"] == "running" and
               job_states(cluster).get(t["job_id"] or "") == "RUNNING" else None)(
        lab.task(long)), "the long job running")  # fmt: skip
    cluster.time_out(str(job))  # as if its 10 minutes were over
    code, out, err = finish(proc, timeout=150)
    assert code == 1, (out, err)
    timed = lab.task(short[0])
    assert timed["state"] == "failed" and timed["reason"].startswith("timed out after 2s"), timed
    killed = lab.task(long)
    assert killed["state"] == "failed", killed
    assert "killed by SLURM at its time limit" in killed["reason"], killed


def test_logs_follow_reads_the_job_output(lab: Lab, cluster: SlurmCluster) -> None:
    (task_id,) = lab.add_cmd("echo first; sleep 3; echo second", "--gpus", "0")
    hosts = cluster_hosts(lab, cluster, setup="echo from setup")  # the setup line runs too
    proc = lab.start("dispatch", "--hosts", str(hosts))
    wait(lambda: lab.task(task_id)["state"] in ("running", "succeeded"), "the job submitted")
    follow = lab.run("logs", str(task_id), "--follow", "--hosts", str(hosts), timeout=120)
    assert follow.returncode == 0, (follow.stdout, follow.stderr)
    assert follow.stdout.splitlines()[-3:] == ["from setup", "first", "second"]
    code, out, err = finish(proc, timeout=60)
    assert code == 0, (out, err)


def test_one_queue_feeds_ssh_hosts_and_a_cluster(lab: Lab, cluster: SlurmCluster) -> None:
    ids = lab.add("--grid=p1=1,2,3,4,5,6,7,8", '--args={"p2": "x", "p3": 1}', "--gpus", "1",
                  sleep=1.0)  # fmt: skip
    text = cluster_hosts(lab, cluster).read_text()
    hosts = lab.write_hosts(
        f'[hosts.gpu1]\nworkdir = "{lab.shared}"\nenv = {{ EXPERIMENT_HOST = "gpu1" }}\n\n' + text
    )
    done = lab.run("dispatch", "--hosts", str(hosts), timeout=180)
    assert done.returncode == 0, (done.stdout, done.stderr)
    tasks = lab.tasks()
    assert {t["state"] for t in tasks} == {"succeeded"}
    by_host = {h: [t for t in tasks if t["host"] == h] for h in ("gpu1", "slurm")}
    assert by_host["gpu1"] and by_host["slurm"], done.stderr  # the SSH host first, then the cluster
    assert all(t["job_id"] for t in by_host["slurm"])
    assert not any(t["job_id"] for t in by_host["gpu1"])
    assert sorted(int(r["task_id"]) for r in lab.records()) == sorted(ids)


def test_a_node_taken_down_loses_the_run_and_retries_it(lab: Lab, cluster: SlurmCluster) -> None:
    (task_id,) = lab.add_cmd("echo start $LABTASKER_RUN_ID; sleep %{s}", '--args={"s": 8}')
    proc = lab.start("dispatch", "--hosts", str(cluster_hosts(lab, cluster)))
    wait(lambda: "start" in lab.run("logs", str(task_id)).stdout, "the task started")
    first = lab.task(task_id)
    cluster.admin("scontrol", "update", f"nodename={cluster.node}", "state=down", "reason=test")
    code, out, err = finish(proc, timeout=120)
    assert code == 0, (out, err)
    task = lab.task(task_id)
    assert task["state"] == "succeeded" and task["run_id"] != first["run_id"], out
    shown = json.loads(lab.ok("queue", "show", str(task_id), "--json"))
    lost, retried = shown["attempts"]  # a lost run, then the retry: no failed attempt
    assert lost["run_id"] == first["run_id"] and "was requeued" in lost["reason"], lost
    assert retried["exit_code"] == 0 and task["max_attempts"] == 1


def dependent_waits_in_slurm(lab: Lab, task_id: int) -> str | None:
    """The job of a task SLURM holds back on its dependency ("pending (Dependency)")."""
    task = lab.task(task_id)
    job = task["job_id"]
    return job if job and task["reason"] == f"SLURM job {job} pending (Dependency)" else None


def test_a_dependent_waits_in_slurm_and_starts_there_without_the_controller(
    lab: Lab, cluster: SlurmCluster
) -> None:
    (first,) = lab.add("--grid=p1=1", '--args={"p2": "a", "p3": 1}', "--gpus", "0", sleep=12)
    (second,) = lab.add("--grid=p1=2", '--args={"p2": "b", "p3": 1}', "--gpus", "0",
                        "--after", str(first))  # fmt: skip
    hosts = cluster_hosts(lab, cluster)
    proc = lab.start("dispatch", "--hosts", str(hosts))
    job = wait(lambda: dependent_waits_in_slurm(lab, second), "the dependent held by SLURM")
    assert lab.task(first)["state"] == "running" and not lab.records()
    shown = cluster.admin("scontrol", "show", "job", str(job)).stdout
    assert f"Dependency=afterok:{lab.task(first)['job_id']}" in shown, shown
    kill9(proc)  # SLURM starts the dependent on its own once the dependency succeeded
    wait(lambda: len(lab.records()) == 2, "both tasks ran with no controller", timeout=120)
    done = lab.run("dispatch", "--hosts", str(hosts), timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)
    runs = {int(r["task_id"]): r for r in lab.records()}
    assert sorted(runs) == [first, second] and len(lab.records()) == 2  # each ran once
    assert runs[second]["start"] >= runs[first]["end"]
    tasks = {t["id"]: t for t in lab.tasks()}
    assert tasks[second]["state"] == "succeeded" and tasks[second]["attempt"] == 1, tasks


def test_a_failure_that_will_be_retried_starts_no_dependent(
    lab: Lab, cluster: SlurmCluster
) -> None:
    # The dependency fails its first attempt and succeeds its second. SLURM alone would start
    # --after-any and --after-failed dependents after the first; labtasker's rule holds them
    # back (withdrawn, back to pending), then cancels the --after-failed one (and its job).
    mark = lab.shared / "failed-once"
    dep_cmd = f"sleep 6; if [ -e {mark} ]; then echo second; else touch {mark}; exit 3; fi"
    (dep,) = lab.add_cmd(dep_cmd, "--gpus", "0", "--max-attempts", "2")
    kinds = ("--after", "--after-any", "--after-failed")
    after, after_any, after_failed = (
        lab.add(f"--grid=p1={n}", '--args={"p2": "x", "p3": 1}', "--gpus", "0", kind, str(dep))[0]
        for n, kind in enumerate(kinds)
    )
    proc = lab.start("dispatch", "--hosts", str(cluster_hosts(lab, cluster)))
    wait(lambda: dependent_waits_in_slurm(lab, after), "a dependent held by SLURM")
    code, out, err = finish(proc, timeout=180)
    assert code == 0, (out, err)
    tasks = {t["id"]: t for t in lab.tasks()}
    assert tasks[dep]["state"] == "succeeded" and tasks[dep]["attempt"] == 2, tasks[dep]
    assert tasks[after]["state"] == tasks[after_any]["state"] == "succeeded", tasks
    assert tasks[after_failed]["state"] == "cancelled", tasks[after_failed]
    assert tasks[after_failed]["reason"] == f"dependency {dep} succeeded", tasks[after_failed]
    runs = [int(r["task_id"]) for r in lab.records()]
    assert sorted(runs) == sorted([after, after_any]), runs  # each once, after the success
    ended = datetime.fromisoformat(tasks[dep]["finished_at"].replace("Z", "+00:00"))
    assert all(r["start"] >= ended.timestamp() - 1 for r in lab.records())
    *held, ran = json.loads(lab.ok("queue", "show", str(after), "--json"))["attempts"]
    assert held and all("withdrawn from slurm" in (a["reason"] or "") for a in held), held
    assert ran["exit_code"] == 0 and tasks[after]["attempt"] == 1  # a withdrawal is no attempt
    # afterok on a failed job: SLURM never starts it; the helper scancels it and withdraws it.
    assert "DependencyNeverSatisfied" in held[0]["reason"], held
    # afterany: SLURM starts it; the wrapper on the compute node holds it back.
    *held_any, _ = json.loads(lab.ok("queue", "show", str(after_any), "--json"))["attempts"]
    assert "failed and will be retried" in held_any[0]["reason"], held_any
    wait(lambda: not job_states(cluster), "SLURM has no job of ours left")


def test_a_submission_the_cluster_refuses_fails_the_task_with_its_line(
    lab: Lab, cluster: SlurmCluster
) -> None:
    (task_id,) = lab.add_cmd("echo never", "--gpus", "0")
    hosts = cluster_hosts(lab, cluster, partition="nosuch")
    done = lab.run("dispatch", "--hosts", str(hosts), timeout=120)
    assert done.returncode == 1, (done.stdout, done.stderr)
    task = lab.task(task_id)
    assert task["state"] == "failed", task
    assert "sbatch on" in task["reason"] and "invalid partition" in task["reason"], task
    assert "Traceback" not in done.stdout + done.stderr


def test_a_stalled_slurmctld_delays_nothing_and_loses_nothing(
    lab: Lab, cluster: SlurmCluster
) -> None:
    (task_id,) = lab.add_cmd("echo start; sleep %{s}; echo end", '--args={"s": 20}')
    proc = lab.start("dispatch", "--hosts", str(cluster_hosts(lab, cluster)))
    wait(lambda: "start" in lab.run("logs", str(task_id)).stdout, "the task started")
    ctld = cluster.daemons["slurmctld"]
    ctld.send_signal(signal.SIGSTOP)  # squeue, sbatch and scancel now hang, then fail
    try:
        # Its exit record is the truth: its end is collected without slurmctld's word.
        wait(lambda: lab.task(task_id)["state"] == "succeeded", "the task's end", timeout=90)
    finally:
        ctld.send_signal(signal.SIGCONT)
    code, out, err = finish(proc, timeout=120)
    assert code == 0, (out, err)
    task = lab.task(task_id)
    assert task["state"] == "succeeded" and task["attempt"] == 1, (task, out)
    assert "lost" not in out
