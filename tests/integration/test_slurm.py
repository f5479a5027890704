"""SLURM clusters as hosts (``kind = "slurm"``), against a real slurmctld and slurmd.

The cluster is ``tests/slurm.py``'s: one node with 16 CPUs and 4 fake GPUs, MaxArraySize 8, its
login node an sshd test host. Every task goes through the real CLI: ``queue add``, ``dispatch``,
``queue ls --json``; SLURM's own view is read with ``squeue`` as root.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Lab, finish, wait
from tests.slurm import SlurmCluster


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
    ids = lab.add("--grid=p1=1,2,3,4", "--grid=p2=a,b,c,d", '--args={"p3": 0.5}', "--gpus", "1", sleep=0.2)
    hosts = cluster_hosts(lab, cluster)
    done = lab.run("dispatch", "--hosts", str(hosts), timeout=180)
    print(done.stdout, done.stderr)
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
