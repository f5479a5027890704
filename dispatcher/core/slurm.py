"""What a task asks of a SLURM cluster: its sbatch options, and whether a cluster can take it.

Pure: no I/O. The helper groups runs whose options are equal into one job array; the options are
built here, on the controller, so the helper passes them to sbatch as they are (an argv, never
shell text). ``--timeout`` is enforced exactly by labtasker's wrapper on the compute node; the
job's SLURM time limit is that rounded up to whole minutes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dispatcher.core.gpu_packing import GpuNeed, type_matches


@dataclass(frozen=True)
class ClusterOffer:
    """What a cluster offers the scheduler: GPUs through ``gres`` (of a type, if it names one)."""

    gres: str | None  # "gpu" or "gpu:a100"; None: CPU jobs only
    gpu_type: str | None  # the type gres names


def time_minutes(seconds: float) -> int:
    """A SLURM time limit in whole minutes, never below 1, never below ``seconds``."""
    return max(1, math.ceil(seconds / 60))


def gpu_count(gres: str | None, gpus: int | None) -> int:
    """GPUs a task asks of the cluster: ``--gpus N``, else one where the cluster has GPUs."""
    if gpus is not None:
        return gpus
    return 1 if gres else 0


def sbatch_options(
    *,
    partition: str | None,
    account: str | None,
    qos: str | None,
    constraint: str | None,
    gres: str | None,
    sbatch_args: Sequence[str],
    default_time: float | None,
    gpus: int | None,
    timeout: float | None,
    after: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """The sbatch options of one task; equal lists share one job array. ``after``: (SLURM
    dependency type, job id) pairs SLURM holds the job back on, all of them."""
    out = [f"--{k}={v}" for k, v in (("partition", partition), ("account", account),
           ("qos", qos), ("constraint", constraint)) if v]  # fmt: skip
    if after:
        out.append("--dependency=" + ",".join(f"{kind}:{job}" for kind, job in after))
    limit = timeout if timeout is not None else default_time
    if limit is not None:
        out.append(f"--time={time_minutes(limit)}")
    n = gpu_count(gres, gpus)
    if n > 0:
        out.append(f"--gres={gres or 'gpu'}:{n}")
    return [*out, *sbatch_args]


def cluster_refusal(offer: ClusterOffer, kind: str, need: GpuNeed) -> str | None:
    """Why this cluster cannot take a task of ``kind`` ("gpu", "slot", "default") with ``need``;
    None when it can. GPU memory packing needs nvidia-smi readings: SSH hosts only. A GPU type
    is taken only where ``gres`` names a matching type."""
    if kind != "gpu":
        return None
    if offer.gres is None:
        return "no gres set for GPUs"
    if need.memory is not None or need.min_memory is not None:
        return "GPU memory needs are placed on SSH hosts only"
    if need.gpu_type is not None and not type_matches(offer.gpu_type or "", need.gpu_type):
        return f"gres {offer.gres} is not of type {need.gpu_type}"
    return None
