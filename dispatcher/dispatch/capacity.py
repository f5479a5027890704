"""What each host can take right now, as the scheduler sees it. Pure: no I/O, no clock of its own.

Turns a host's spec, its last nvidia-smi inventory and the tasks labtasker has active there into
a ``scheduler.HostCapacity``. A GPU is free when no labtasker task holds or shares it (a launched
task keeps its GPU from launch to exit, so two tasks never race for one) and its used memory is
under the host's ``max_gpu_memory_used`` (memory above that belongs to someone else's
processes). Its room for tasks that share GPUs by memory is worked out in ``gpu_info``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dispatcher.config.hosts import HostSpec
from dispatcher.core.models import Task
from dispatcher.core.scheduler import GpuInfo, HostCapacity
from dispatcher.core.slurm import ClusterOffer

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


def gpu_info(
    spec: HostSpec,
    g: Mapping[str, Any] | None,
    idx: int,
    inventory: Mapping[str, Any] | None,
    ours: Mapping[int, list[Task]],
    *,
    stale: bool,
) -> GpuInfo:
    """One GPU as the scheduler sees it: who holds or shares it, and the room left on it.

    Room: total memory, less what processes outside our tasks use, less what each sharing task
    declared or uses (the larger). Where nvidia-smi gives no per-process memory, our tasks are
    taken to use what they declared. ``stale``: our task just left it, so its memory reading
    still shows that task: the GPU is not someone else's for an exclusive task, and for room
    only processes without a labtasker run id count as someone else's.
    """
    tasks = ours.get(idx, [])
    holder = next((t.id for t in tasks if t.gpu_memory is None), None)
    sharers = [t for t in tasks if t.gpu_memory is not None]
    if g is None:
        return GpuInfo(idx, holder, None, sharers=tuple(t.id for t in sharers))
    uuid = g.get("uuid")
    procs = [p for p in (inventory or {}).get("processes") or [] if p.get("gpu_uuid") == uuid]
    runs = {t.run_id: t for t in sharers if t.run_id}
    per_run: dict[str, int] = {}
    known = all(isinstance(p.get("used_memory_mib"), int | float) for p in procs)
    for p in procs:
        if p.get("run_id") in runs and known:
            per_run[p["run_id"]] = per_run.get(p["run_id"], 0) + int(p["used_memory_mib"] * MIB)
    used, total = _bytes(g.get("memory_used_mib")), _bytes(g.get("memory_total_mib"))
    # Where nvidia-smi gives no per-process memory, declarations alone count.
    ours_used = sum(per_run.values()) if known else sum(t.gpu_memory or 0 for t in sharers)
    if stale and known:
        # The reading still shows a task of ours that has ended: every process that carries a
        # labtasker run id is ours, the rest (another user's job) still takes its memory.
        ours_used = sum(int(p["used_memory_mib"] * MIB) for p in procs if p.get("run_id"))
    # Stale without per-process memory: the ended task's memory counts as someone else's until
    # the next reading (a wait of a few seconds, never a card given more than it has).
    foreign_used = 0 if used is None else max(0, used - ours_used)
    reserved = sum(max(t.gpu_memory or 0, per_run.get(t.run_id or "", 0)) for t in sharers)
    room = None if total is None else max(0, total - foreign_used - reserved)
    foreign = None
    if holder is None and not sharers and not stale:
        foreign = foreign_use(g, procs, spec.max_gpu_memory_used)
    return GpuInfo(idx, holder, foreign, str(g.get("name") or ""), total, room,
                   tuple(t.id for t in sharers))  # fmt: skip


def gpu_rows(
    spec: HostSpec, inventory: Mapping[str, Any] | None, active: Iterable[Task]
) -> list[dict[str, Any]]:
    """The host's GPUs as ``status`` and ``hosts check`` show them: name, memory used and total,
    our task holding it or our tasks sharing it with what they declared, free room, and someone
    else's use. ``active``: our launching or running tasks on this host."""
    ours: dict[int, list[Task]] = {}
    for t in active:
        for i in t.gpu_ids or []:
            ours.setdefault(i, []).append(t)
    rows: list[dict[str, Any]] = []
    for g in (inventory or {}).get("gpus") or []:
        idx = g.get("index")
        if not isinstance(idx, int) or (isinstance(spec.gpus, tuple) and idx not in spec.gpus):
            continue  # not ours to use: pinned out
        info = gpu_info(spec, g, idx, inventory, ours, stale=False)
        declared = sum(t.gpu_memory or 0 for t in ours.get(idx, []))
        rows.append({
            "index": idx, "name": g.get("name"), "used_mib": g.get("memory_used_mib"),
            "total_mib": g.get("memory_total_mib"), "task": info.held_by_task,
            "shared_by": list(info.sharers),
            "declared_mib": declared // 2**20 if info.sharers else None,
            "free_mib": None if info.room is None else info.room // 2**20, "other": info.foreign,
        })  # fmt: skip
    return rows


def _bytes(mib: Any) -> int | None:
    return int(mib * MIB) if isinstance(mib, int | float) and not isinstance(mib, bool) else None


def host_capacity(
    spec: HostSpec,
    *,
    order: int,
    usable: bool,
    unusable_reason: str | None,
    inventory: Mapping[str, Any] | None,
    active: Iterable[Task],
    recently_released: Iterable[int] = (),
    settling: bool = False,
) -> HostCapacity:
    """Build the scheduler's view of one host.

    ``inventory`` is the helper's ``gpus`` reply (None while never fetched). GPUs in
    ``recently_released`` were freed by our own tasks after the inventory was taken, so their
    memory reading is stale and is not held against them.
    """
    ours: dict[int, list[Task]] = {}
    slots_used = 0
    for task in active:
        for idx in task.gpu_ids or ():
            ours.setdefault(idx, []).append(task)
        slots_used += not task.gpu_ids
    problem = gpu_problem(spec, inventory)
    if problem:
        usable, unusable_reason = False, f"{spec.name}: {problem}"
    released = set(recently_released)
    gpus: list[GpuInfo] = []
    known = True
    by_index = {g.get("index"): g for g in (inventory or {}).get("gpus") or []}
    if spec.gpus == "auto":
        if inventory is None or inventory.get("error"):
            known = inventory is not None
            no_smi = inventory is not None and "not found" in str(inventory.get("error"))
            if no_smi and not spec.gpus_given:
                known = True  # no nvidia-smi and no GPUs asked for: a CPU-only host
        else:
            rows = [g for g in inventory.get("gpus") or [] if isinstance(g.get("index"), int)]
            gpus = [gpu_info(spec, g, g["index"], inventory, ours, stale=g["index"] in released)
                    for g in rows]  # fmt: skip
    elif spec.gpus:
        gpus = [gpu_info(spec, by_index.get(i) if inventory else None, i, inventory, ours,
                         stale=i in released) for i in spec.gpus]  # fmt: skip
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
        max_tasks_per_gpu=spec.max_tasks_per_gpu,
        max_gpus=spec.max_gpus,
        gpu_order=spec.gpu_order,
        cluster=ClusterOffer(spec.slurm.gres, spec.slurm.gpu_type) if spec.slurm else None,
        settling=settling,
    )
