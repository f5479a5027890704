"""What each host can take right now, as the scheduler sees it. Pure: no I/O, no clock of its own.

Turns a host's spec, its last nvidia-smi inventory and the tasks labtasker has active there into
a ``scheduler.HostCapacity``. A GPU is free when no labtasker task holds it (a launched task keeps
its GPU from launch to exit, so two tasks never race for one) and its used memory is under the
host's ``max_gpu_memory_used`` (memory above that belongs to someone else's processes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dispatcher.config.hosts import HostSpec
from dispatcher.core.models import Task
from dispatcher.core.scheduler import GpuInfo, HostCapacity

MIB = 1024 * 1024


def _fmt_mib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def foreign_use(
    gpu: Mapping[str, Any], processes: Iterable[Mapping[str, Any]], threshold_bytes: int
) -> str | None:
    """Who else uses this GPU, if its used memory is over the threshold; None when it is free."""
    used = gpu.get("memory_used_mib")
    if not isinstance(used, int | float) or used * MIB <= threshold_bytes:
        return None
    owners = [
        f"{p.get('user') or '?'} (pid {p.get('pid')})"
        for p in processes
        if p.get("gpu_uuid") and p.get("gpu_uuid") == gpu.get("uuid")
    ]
    who = ", ".join(owners[:3]) + (f" +{len(owners) - 3}" if len(owners) > 3 else "")
    return f"{_fmt_mib(used)} used by {who}" if who else f"{_fmt_mib(used)} used by another process"


def gpu_problem(spec: HostSpec, inventory: Mapping[str, Any] | None) -> str | None:
    """Why this host's GPUs cannot be used at all (nvidia-smi missing, pinned index absent)."""
    if spec.gpus == ():
        return None
    if inventory is None:
        return None
    error = inventory.get("error")
    indices = {g.get("index") for g in inventory.get("gpus") or []}
    if spec.gpus == "auto":
        missing_smi = bool(error) and "not found" in str(error)
        if missing_smi and spec.gpus_given:
            return f'gpus = "auto" but {error}; set gpus = 0 for a CPU-only host'
        if error and not missing_smi:
            return f"{error}; fix the driver or set gpus = 0 for a CPU-only host"
        return None
    if error:
        return None  # pinned GPUs on a host whose nvidia-smi fails: trust the pin
    missing = [i for i in spec.gpus if i not in indices]
    if missing:
        have = ", ".join(str(i) for i in sorted(x for x in indices if isinstance(x, int)))
        return f"GPU index {missing[0]} does not exist (nvidia-smi lists: {have or 'none'})"
    return None


def host_capacity(
    spec: HostSpec,
    *,
    order: int,
    usable: bool,
    unusable_reason: str | None,
    inventory: Mapping[str, Any] | None,
    active: Iterable[Task],
    recently_released: Iterable[int] = (),
) -> HostCapacity:
    """Build the scheduler's view of one host.

    ``inventory`` is the helper's ``gpus`` reply (None while never fetched). GPUs in
    ``recently_released`` were freed by our own tasks after the inventory was taken, so their
    memory reading is stale and is not held against them.
    """
    held: dict[int, int] = {}
    slots_used = 0
    for task in active:
        if task.gpu_ids:
            for idx in task.gpu_ids:
                held[idx] = task.id
        else:
            slots_used += 1
    problem = gpu_problem(spec, inventory)
    if problem:
        usable, unusable_reason = False, f"{spec.name}: {problem}"
    released = set(recently_released)
    gpus: list[GpuInfo] = []
    known = True
    if spec.gpus == "auto":
        if inventory is None or inventory.get("error"):
            known = inventory is not None
            no_smi = inventory is not None and "not found" in str(inventory.get("error"))
            if no_smi and not spec.gpus_given:
                known = True  # no nvidia-smi and no GPUs asked for: a CPU-only host
        else:
            for g in inventory.get("gpus") or []:
                idx = g.get("index")
                if not isinstance(idx, int):
                    continue
                foreign = None
                if idx not in held and idx not in released:
                    foreign = foreign_use(
                        g, inventory.get("processes") or [], spec.max_gpu_memory_used
                    )
                gpus.append(GpuInfo(index=idx, held_by_task=held.get(idx), foreign=foreign))
    elif spec.gpus:
        by_index = {g.get("index"): g for g in (inventory or {}).get("gpus") or []}
        for idx in spec.gpus:
            foreign = None
            g = by_index.get(idx)
            if g is not None and idx not in held and idx not in released and inventory:
                foreign = foreign_use(g, inventory.get("processes") or [], spec.max_gpu_memory_used)
            gpus.append(GpuInfo(index=idx, held_by_task=held.get(idx), foreign=foreign))
    # An unset `slots` on a host whose "auto" query found no GPU makes it a 1-slot CPU host.
    slots_total = spec.slots_for(len(gpus)) if known else spec.slots
    return HostCapacity(
        name=spec.name,
        order=order,
        usable=usable,
        unusable_reason=unusable_reason,
        gpus=tuple(gpus),
        slots_total=slots_total,
        slots_used=slots_used,
        gpus_known=known,
    )
