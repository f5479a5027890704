"""SLURM hosts' pure rules: their settings in hosts.toml, the sbatch options of a task, and where
the scheduler places tasks when a cluster is among the hosts (core.scheduler rule 9)."""

from __future__ import annotations

import functools

import pytest

from dispatcher.config.hosts import make_host
from dispatcher.core.gpu_packing import GpuNeed
from dispatcher.core.scheduler import Candidate, GpuInfo, HostCapacity, plan
from dispatcher.core.slurm import ClusterOffer, cluster_refusal, sbatch_options, time_minutes
from dispatcher.errors import ConfigError

GIB = 1024**3


def cluster(
    name: str = "cluster", jobs: int = 3, used: int = 0, gres: str | None = "gpu:a100"
) -> HostCapacity:
    offer = ClusterOffer(gres, gres.split(":")[1] if gres and ":" in gres else None)
    return HostCapacity(name, 9, True, None, (), jobs, used, True, cluster=offer)


def server(name: str = "box", gpus: int = 2, held: int = 0) -> HostCapacity:
    infos = tuple(GpuInfo(i, 100 + i if i < held else None, None, "A100", 80 * GIB, 80 * GIB)
                  for i in range(gpus))  # fmt: skip
    return HostCapacity(name, 0, True, None, infos, 0, 0, True)


def test_a_cluster_host_needs_a_shared_workdir_and_no_gpu_settings() -> None:
    spec = make_host("c", {"kind": "slurm", "workdir": "/scratch/me", "gres": "gpu:a100",
                           "time": "4h", "max_jobs": 50})  # fmt: skip
    assert (spec.kind, spec.gpus, spec.slots, spec.sync) == ("slurm", (), 50, True)
    assert spec.state_dir == "/scratch/me/.labtasker"  # where the compute nodes see run records
    assert spec.slurm is not None and spec.slurm.gpu_type == "a100" and spec.slurm.time == 14400
    with pytest.raises(ConfigError, match="needs `workdir`"):
        make_host("c", {"kind": "slurm"})
    with pytest.raises(ConfigError, match='`partition` is a SLURM setting; add kind = "slurm"'):
        make_host("c", {"partition": "gpu"})
    with pytest.raises(ConfigError, match="`gpus` does not apply to a SLURM cluster"):
        make_host("c", {"kind": "slurm", "workdir": "/s", "gpus": [0, 1]})
    with pytest.raises(ConfigError, match="at least 5 s"):
        make_host("c", {"kind": "slurm", "workdir": "/s", "poll_interval": "2s"})
    with pytest.raises(ConfigError, match="a SLURM name"):
        make_host("c", {"kind": "slurm", "workdir": "/s", "partition": "gpu; rm -rf ~"})
    with pytest.raises(ConfigError, match="long sbatch options"):
        make_host("c", {"kind": "slurm", "workdir": "/s", "sbatch_args": ["-p gpu"]})
    with pytest.raises(ConfigError, match='"ssh" or "slurm"'):
        make_host("c", {"kind": "k8s"})


def test_sbatch_options_round_the_timeout_up_to_minutes_and_ask_gres_for_the_gpus() -> None:
    options = functools.partial(
        sbatch_options, partition="gpu", account="lab", qos=None, constraint=None,
        gres="gpu:a100", sbatch_args=("--mem=32G",), default_time=4 * 3600.0,
    )  # fmt: skip  # fmt: skip
    assert options(gpus=2, timeout=61) == [
        "--partition=gpu",
        "--account=lab",
        "--time=2",
        "--gres=gpu:a100:2",
        "--mem=32G",
    ]
    # No --timeout: the host's `time`; no --gpus: one GPU where gres is set.
    assert options(gpus=None, timeout=None)[2:4] == [
        "--time=240",
        "--gres=gpu:a100:1",
    ]
    assert "--gres" not in " ".join(options(gpus=0, timeout=None))
    assert [time_minutes(s) for s in (1, 60, 60.5, 3600)] == [1, 1, 2, 60]


def test_gpu_memory_needs_stay_on_ssh_hosts_and_a_type_needs_a_matching_gres() -> None:
    offer = ClusterOffer("gpu:a100", "a100")
    assert cluster_refusal(offer, "gpu", GpuNeed(1, gpu_type="A100|H100")) is None
    assert cluster_refusal(offer, "gpu", GpuNeed(1, gpu_type="H100")) == (
        "gres gpu:a100 is not of type H100"
    )
    assert "SSH hosts only" in str(cluster_refusal(offer, "gpu", GpuNeed(1, memory=GIB)))
    assert cluster_refusal(ClusterOffer(None, None), "gpu", GpuNeed(1)) == "no gres set for GPUs"
    assert cluster_refusal(ClusterOffer(None, None), "slot", GpuNeed(1)) is None


def test_ssh_hosts_first_then_the_cluster_up_to_max_jobs() -> None:
    tasks = [Candidate(i, 0, 1) for i in range(1, 7)]
    p = plan(tasks, [server(gpus=2), cluster(jobs=3)])
    where = {pl.task_id: pl.host for pl in p.placements}
    assert where == {1: "box", 2: "box", 3: "cluster", 4: "cluster", 5: "cluster"}
    assert p.waiting[6].endswith("cluster 0/3 jobs submitted")
    assert all(pl.gpu_ids == () for pl in p.placements if pl.host == "cluster")


def test_a_task_too_big_for_every_server_is_not_impossible_with_a_cluster() -> None:
    p = plan([Candidate(1, 0, 8)], [server(gpus=2), cluster()])
    assert [pl.host for pl in p.placements] == ["cluster"]
    alone = plan([Candidate(1, 0, 8)], [server(gpus=2)])
    assert 1 in alone.impossible


def test_only_clusters_say_only_their_own_state() -> None:
    p = plan([Candidate(1, 0, 1), Candidate(2, 0, 0)], [cluster(jobs=2, used=2)])
    assert p.placements == ()
    assert p.waiting == {1: "cluster 2/2 jobs submitted", 2: "cluster 2/2 jobs submitted"}


def test_memory_needs_never_go_to_the_cluster() -> None:
    need = Candidate(1, 0, 1, gpu_memory=10 * GIB)
    p = plan([need], [server(gpus=1, held=1), cluster()])
    assert p.placements == () and "cluster" not in p.waiting[1]
    typed = plan([Candidate(2, 0, 1, gpu_type="a100")], [server(gpus=1, held=1), cluster()])
    assert [pl.host for pl in typed.placements] == ["cluster"]


def test_max_running_counts_submitted_jobs_across_hosts() -> None:
    tasks = [Candidate(i, 0, 1, group="sweep", max_running=2) for i in range(1, 5)]
    p = plan(tasks, [cluster(jobs=10)], active={"sweep": 1})
    assert len(p.placements) == 1
    assert p.waiting[3] == "sweep sweep at its limit of 2 running"


def test_the_cluster_waits_while_an_ssh_host_makes_its_first_connection() -> None:
    connecting = HostCapacity("box", 0, False, "box connecting", (), 0, 0, False, settling=True)
    p = plan([Candidate(1, 0, 1)], [connecting, cluster()])
    assert p.placements == ()
    settled = HostCapacity("box", 0, False, "box unreachable", (), 0, 0, False)
    assert [pl.host for pl in plan([Candidate(1, 0, 1)], [settled, cluster()]).placements] == [
        "cluster"
    ]
