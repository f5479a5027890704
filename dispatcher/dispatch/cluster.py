"""The controller's side of SLURM hosts: what a launch tells the helper, what a report says.

A task on a ``kind = "slurm"`` host is launched like any other (one ``launches`` request per
round); its spec carries ``slurm``: the sbatch options (``core/slurm.py``), the poll interval and
the time limit. Reports of its run carry ``job_id``, ``job_state`` and ``job_reason`` (squeue's);
a job SLURM holds pending shows that reason on the running task, as squeue does. A task
submitted ahead of its dependencies (``core.ahead``) carries ``gate``: what SLURM holds it back
on, which the wrapper on the compute node checks again before it starts anything.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dispatcher.config.hosts import HostSpec
from dispatcher.core.deps import Gate
from dispatcher.core.models import Task
from dispatcher.core.slurm import sbatch_options

_JOB_ID = re.compile(r"[0-9]{1,20}(_[0-9]{1,10})?")
_REASON = re.compile(r"[A-Za-z0-9_ ,.:()=/+-]{1,100}")


def slurm_launch(spec: HostSpec, task: Task, gates: Sequence[Gate] = ()) -> dict[str, Any] | None:
    """The ``slurm`` part of a launch spec; None for a host that is not a cluster. ``gates``:
    the dependencies a task submitted ahead waits for (SLURM's --dependency, and the wrapper's
    check of their exit records)."""
    s = spec.slurm
    if s is None:
        return None
    options = sbatch_options(
        partition=s.partition, account=s.account, qos=s.qos, constraint=s.constraint,
        gres=s.gres, sbatch_args=s.sbatch_args, default_time=s.time, gpus=task.gpus,
        timeout=task.timeout, after=[(g.kind.slurm, g.job_id) for g in gates],
    )  # fmt: skip
    limit = task.timeout if task.timeout is not None else s.time
    gate = [{"kind": g.kind.value, "task": g.task, "run": g.run_id, "last": g.last} for g in gates]
    return {"sbatch": options, "poll": s.poll_interval, "time_limit": limit, "gate": gate}


def job_of(report: dict[str, Any]) -> tuple[str | None, str | None]:
    """(job id, pending reason) from a report of a SLURM run: checked, or None each."""
    job = report.get("job_id")
    job = job if isinstance(job, str) and _JOB_ID.fullmatch(job) else None
    state, why = report.get("job_state"), report.get("job_reason")
    if job is None or state != "PENDING":
        return job, None
    why = why if isinstance(why, str) and _REASON.fullmatch(why) else None
    return job, f"SLURM job {job} pending ({why})" if why else f"SLURM job {job} pending"
