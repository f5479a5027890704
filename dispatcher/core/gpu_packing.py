"""Pure GPU choice on one host: which of its GPUs a task takes, whole or by memory. No I/O.

``choose(gpus, need, ...)`` applies these rules (the scheduler picks the host, see scheduler.py):

1. A GPU matches a need when its name contains one of the ``|``-separated parts of ``gpu_type``
   (case-insensitive) and its total memory is at least ``min_memory``; a GPU of unknown name or
   size matches no such constraint.
2. Exclusive (no ``memory``): the task takes whole GPUs: no labtasker task on them, no other
   user's process over the host's threshold. It takes the smallest matching cards first (then
   ``gpu_order``), keeping the large ones for packing and for needs that ask for them.
3. Shared (``memory`` set): a GPU fits when it is not held whole, its ``room`` (total memory, less
   other processes' use, less what our sharing tasks on it declared or use, the larger) is at
   least ``memory``, and fewer than ``max_sharers`` of our tasks share it. Best fit: GPUs already
   shared come first, the one left with the least room after the task first; a whole GPU is
   opened only when no shared one fits, the largest first (it holds the most further tasks).
4. ``budget``: how many more GPUs this host may start using (``max_gpus`` less those our tasks
   already use); a GPU our tasks already share does not count against it.

``take`` applies a choice to the GPUs, so a plan never gives a GPU more than its room.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuNeed:
    """What a task asks of each of its ``count`` GPUs on one host."""

    count: int
    memory: int | None = None  # bytes per GPU; None: whole GPUs (exclusive)
    gpu_type: str | None = None  # "A100|H100"
    min_memory: int | None = None  # bytes of total memory

    @property
    def constrained(self) -> bool:
        return self.memory is not None or self.gpu_type is not None or self.min_memory is not None


@dataclass
class GpuSlot:
    """One GPU during a plan; ``take`` changes it."""

    index: int
    name: str = ""
    total: int | None = None  # bytes; None when nvidia-smi did not say
    room: int | None = None  # bytes a sharing task may still declare; None: unknown
    whole: bool = True  # free for an exclusive task
    held: bool = False  # an exclusive task of ours holds it
    sharers: int = 0  # our sharing tasks on it
    rank: int = 0  # position in the host's gpu_order


def type_matches(name: str, gpu_type: str | None) -> bool:
    """Rule 1's name test: any ``|``-separated part is in ``name``, ignoring case."""
    if gpu_type is None:
        return True
    low = name.lower()
    return any(p.strip().lower() in low for p in gpu_type.split("|") if p.strip())


def matches(gpu: GpuSlot, need: GpuNeed) -> bool:
    """Rule 1: the card is of a wanted type and size (whatever runs on it now)."""
    if need.min_memory is not None and (gpu.total is None or gpu.total < need.min_memory):
        return False
    return type_matches(gpu.name, need.gpu_type) if need.gpu_type else True


def fits(gpu: GpuSlot, need: GpuNeed, max_sharers: int | None) -> bool:
    """Whether ``gpu`` can take one share (or the whole) of ``need`` now."""
    if not matches(gpu, need):
        return False
    if need.memory is None:
        return gpu.whole
    if gpu.held or gpu.room is None or gpu.room < need.memory:
        return False
    return max_sharers is None or gpu.sharers < max_sharers


def choose(
    gpus: Sequence[GpuSlot], need: GpuNeed, *, max_sharers: int | None, budget: int | None
) -> tuple[GpuSlot, ...] | None:
    """The GPUs ``need`` takes on this host by rules 2 to 4, or None when it does not fit."""
    usable = [g for g in gpus if fits(g, need, max_sharers)]
    memory = need.memory
    if memory is None:
        usable.sort(key=lambda g: (g.total or 0, g.rank, g.index))
        shared: list[GpuSlot] = []
        whole = usable
    else:
        shared = sorted(
            (g for g in usable if not g.whole),
            key=lambda g: ((g.room or 0) - memory, g.rank, g.index),
        )
        whole = sorted(
            (g for g in usable if g.whole), key=lambda g: (-(g.room or 0), g.rank, g.index)
        )
    chosen: list[GpuSlot] = []
    for g in [*shared, *whole]:
        new = g.sharers == 0  # a GPU our tasks do not use yet counts against the budget
        if new and budget is not None and sum(1 for c in chosen if c.sharers == 0) >= budget:
            continue
        chosen.append(g)
        if len(chosen) == need.count:
            return tuple(chosen)
    return None


def take(chosen: Sequence[GpuSlot], need: GpuNeed) -> None:
    """Record that a task took ``chosen`` for ``need``."""
    for g in chosen:
        g.whole = False
        if need.memory is None:
            g.held = True
        else:
            g.sharers += 1
            g.room = (g.room or 0) - need.memory


def leftover(chosen: Sequence[GpuSlot], need: GpuNeed) -> int:
    """Room left on the chosen GPUs after the task: the best-fit score of a host (lower wins)."""
    if need.memory is None:
        return sum(g.total or 0 for g in chosen)
    return sum((g.room or 0) - need.memory for g in chosen if not g.whole)


def needs_text(
    gpus: int | None, memory: int | None, gpu_type: str | None, min_memory: int | None
) -> str:
    """A task's GPU needs in a few characters, as ``queue ls`` and ``queue show`` print them:
    "2×10GiB A100|H100 ≥40GiB"; "" for a task without memory, type or size needs."""
    from dispatcher.core.values import show_size

    if memory is None and gpu_type is None and min_memory is None:
        return ""
    count = 1 if gpus is None else gpus
    size = show_size(memory).replace(" ", "") if memory is not None else ""
    words = [f"{count}×{size}" if count > 1 else size]
    words += [gpu_type or ""]
    words += [f"≥{show_size(min_memory).replace(' ', '')}" if min_memory is not None else ""]
    return " ".join(w for w in words if w)


def waiting_prefix(need: GpuNeed) -> str:
    """How a waiting reason for ``need`` starts: "no GPU with 10 GiB free (type A100): "."""
    from dispatcher.core.values import show_size

    if need.memory is not None:
        prefix = f"no GPU with {show_size(need.memory)} free"
    else:
        prefix = "no free GPU" if need.count == 1 else f"needs {need.count} free GPUs"
    wants = [f"type {need.gpu_type}"] if need.gpu_type else []
    wants += [f"at least {show_size(need.min_memory)}"] if need.min_memory else []
    return prefix + (f" ({', '.join(wants)}): " if wants else ": ")


def never_reason(gpus: Sequence[GpuSlot], need: GpuNeed) -> str | None:
    """Why no GPU of this fleet could ever take ``need`` (every GPU's name and size known), or
    None: "no GPU of type A100|H100", "no GPU with at least 40 GiB"."""
    from dispatcher.core.values import show_size

    if need.gpu_type is not None and not any(type_matches(g.name, need.gpu_type) for g in gpus):
        return f"no GPU of type {need.gpu_type}"
    typed = [g for g in gpus if type_matches(g.name, need.gpu_type)]
    floor = max(need.min_memory or 0, need.memory or 0)
    if floor and not any(g.total is not None and g.total >= floor for g in typed):
        what = f" of type {need.gpu_type}" if need.gpu_type else ""
        return f"no GPU{what} with at least {show_size(floor)}"
    return None


def oom_retry_needs(
    memory: int | None, min_memory: int | None, held: int, free: int | None, total: int | None
) -> dict[str, int]:
    """The GPU needs of a retry after CUDA out-of-memory, so it lands only on a GPU with more
    memory for it than the one it died on.

    A task that declared ``memory``: its declaration grows to what it ``held`` when it died and
    past the ``free`` memory it had there (total less other processes and other sharing tasks).
    A task that had whole GPUs: ``min_memory`` grows past that card's ``total``. {} when the
    facts are unknown (the retry then goes wherever the task fits).
    """
    if memory is not None:
        grown = max(memory, held, (free or 0) + 2**20)
        return {"gpu_memory": grown} if grown > memory else {}
    if total is not None and total + 2**20 > (min_memory or 0):
        return {"min_gpu_memory": total + 2**20}
    return {}
