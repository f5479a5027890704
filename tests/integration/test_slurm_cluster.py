"""The ``slurm_cluster`` fixture: a real SLURM cluster driven over SSH as its login node's user."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import wait
from tests.slurm import SlurmCluster

SCRIPT = """#!/bin/bash
out="$HOME/out/$SLURM_ARRAY_TASK_ID"
echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID ${SLURM_JOB_GPUS-none}" > "$out"
sleep "${1:-0}"
"""


@pytest.fixture
def cluster(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The cluster with an empty ``~/out`` and the job script in the login user's home."""
    cluster = slurm_cluster
    done = cluster.ssh(f"rm -rf out && mkdir out && cat > job.sh <<'EOF'\n{SCRIPT}EOF\n")
    assert done.returncode == 0, done.stderr
    yield cluster
    cluster.admin("scancel", "-u", cluster.login.user)
    cluster.wait_idle()


def squeue(cluster: SlurmCluster, *args: str) -> list[str]:
    """``squeue`` on the login node: one ``%i|%T|%r`` line per job or array element."""
    done = cluster.ssh(f"squeue -h -u $USER -o '%i|%T|%r' {' '.join(args)}")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_array_with_gpus_runs_every_element_over_ssh(cluster: SlurmCluster) -> None:
    done = cluster.ssh("sbatch --parsable --array=0-3%2 --gres=gpu:1 -o /dev/null job.sh 1")
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip()
    assert job.isdigit()
    assert any(line.startswith(f"{job}_") for line in squeue(cluster, "-r"))

    def finished() -> list[str]:
        out = cluster.ssh("cat out/0 out/1 out/2 out/3 2>/dev/null").stdout.splitlines()
        return out if len(out) == 4 and not squeue(cluster) else []

    lines = wait(finished, "4 array elements finished", 60)
    assert isinstance(lines, list)
    gpus = {line.split()[2] for line in lines}
    assert {line.split()[:2][0] for line in lines} == {job}
    assert sorted(line.split()[1] for line in lines) == ["0", "1", "2", "3"]
    expected = {"0", "1", "2", "3"} if cluster.gpu_devices else {"none"}
    assert gpus <= expected


def test_config_reports_the_max_array_size(cluster: SlurmCluster) -> None:
    done = cluster.ssh("scontrol show config")
    assert done.returncode == 0, done.stderr
    assert f"MaxArraySize            = {cluster.max_array_size}\n" in done.stdout
    over = cluster.ssh(f"sbatch --parsable --array=0-{cluster.max_array_size} job.sh")
    assert over.returncode != 0


def test_scancel_stops_a_pending_array(cluster: SlurmCluster) -> None:
    # All four GPUs held by one job: the array waits for Resources.
    hold = cluster.ssh(
        f"sbatch --parsable --gres={cluster.gres}:{cluster.gpus} -o /dev/null --wrap 'sleep 300'"
    )
    assert hold.returncode == 0, hold.stderr
    done = cluster.ssh("sbatch --parsable --array=0-3 --gres=gpu:1 -o /dev/null job.sh")
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip()
    wait(lambda: f"{job}_[0-3]|PENDING|Resources" in squeue(cluster), "array pending on Resources")
    assert cluster.ssh(f"scancel {job}").returncode == 0
    wait(lambda: not any(line.startswith(f"{job}_") for line in squeue(cluster)), "array gone")
    assert cluster.ssh("ls out").stdout == ""


RERUN = """#!/bin/bash
echo "${SLURM_RESTART_COUNT-0}" >> "$HOME/out/runs"
[ -n "$SLURM_RESTART_COUNT" ] || sleep 300
"""


def test_requeue_runs_the_job_again_with_a_restart_count(cluster: SlurmCluster) -> None:
    assert cluster.ssh(f"cat > rerun.sh <<'EOF'\n{RERUN}EOF\n").returncode == 0
    done = cluster.ssh("sbatch --parsable -o /dev/null rerun.sh")
    job = done.stdout.strip()
    wait(lambda: cluster.ssh("cat out/runs").stdout == "0\n", "first run")
    cluster.admin("scontrol", "requeue", job)
    wait(lambda: cluster.ssh("cat out/runs").stdout == "0\n1\n", "second run", 60)


@pytest.mark.slow
def test_time_out_kills_a_running_job_with_timeout(cluster: SlurmCluster) -> None:
    done = cluster.ssh("sbatch --parsable --time=1 -o /dev/null --wrap 'sleep 300'")
    job = done.stdout.strip()
    wait(lambda: f"{job}|RUNNING|None" in squeue(cluster, "-j", job), "job running")
    cluster.time_out(job)
    wait(lambda: f"{job}|TIMEOUT|TimeLimit" in squeue(cluster, "-t all -j", job), "TIMEOUT", 60)
