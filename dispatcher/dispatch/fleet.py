"""The check of GPU needs against the fleet that ``queue add`` and ``Queue.add`` share: refuse
what no GPU could ever take.

What is known when: hosts.toml names the hosts (one with ``gpus = 0`` has none); the names and
sizes of their GPUs are those the dispatcher last saw, from the status file it writes beside the
queue. A task with ``--gpu-type`` or ``--min-gpu-memory`` (or ``--gpu-memory``) is refused only
when every GPU host of hosts.toml has been seen there and none of its GPUs could ever take the
task; otherwise it is added, and the dispatcher says why it waits.
"""

from __future__ import annotations

from pathlib import Path

from dispatcher.config.hosts import load_hosts
from dispatcher.config.paths import project_dir
from dispatcher.core.batch import TaskBatch
from dispatcher.core.gpu_packing import GpuNeed, GpuSlot, never_reason
from dispatcher.dispatch.logs import read_status_file
from dispatcher.errors import UsageError

MIB = 2**20
#: hosts.toml when ``--hosts`` is not given: the dispatcher's own default.
DEFAULT_HOSTS = Path("hosts.toml")


def known_gpus(hosts_path: Path, db_path: Path) -> list[GpuSlot] | None:
    """Every GPU of the hosts in ``hosts_path`` as the dispatcher last saw it, or None when
    some GPU host was never seen (or its GPUs' names and sizes are not known)."""
    config = load_hosts(hosts_path)
    seen = read_status_file(db_path).hosts
    gpus: list[GpuSlot] = []
    for spec in config.hosts:
        if spec.gpus == ():
            continue  # CPU-only
        rows = (seen.get(spec.name) or {}).get("gpus") or []
        if not rows:
            return None
        for g in rows:
            name, total = g.get("name"), g.get("total_mib")
            if not isinstance(name, str) or not name or not isinstance(total, int | float):
                return None
            gpus.append(GpuSlot(int(g.get("index") or 0), name, int(total * MIB)))
    return gpus


def refuse_impossible_gpu_needs(batch: TaskBatch, db_path: Path, hosts: Path | None) -> None:
    """UsageError when no GPU of any host in hosts.toml could ever take the batch's tasks.

    ``hosts``: ``--hosts PATH`` (must exist); None reads ./hosts.toml, else the one in the
    queue's project directory, when there is one.
    """
    if batch.gpu_memory is None and batch.gpu_type is None and batch.min_gpu_memory is None:
        return
    path = hosts
    if path is None:  # as dispatch finds it: here, else in the queue's project directory
        found = [p for p in (DEFAULT_HOSTS, project_dir(db_path) / DEFAULT_HOSTS) if p.is_file()]
        if not found:
            return
        path = found[0]
    gpus = known_gpus(path, db_path)
    if gpus is None:
        return
    need = GpuNeed(batch.gpus or 1, batch.gpu_memory, batch.gpu_type, batch.min_gpu_memory)
    why = "no GPU host" if not gpus else never_reason(gpus, need)
    if why is not None:
        cards = sorted({f"{g.name} ({g.total // 2**30 if g.total else '?'} GiB)" for g in gpus})
        seen = f"; the dispatcher last saw: {', '.join(cards)}" if cards else ""
        raise UsageError(
            f"{path}: {why} on any host{seen}. Nothing was added: relax --gpu-type,"
            " --min-gpu-memory or --gpu-memory, or add a host with such a GPU"
        )
