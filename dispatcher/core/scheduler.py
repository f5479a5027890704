"""Pure placement: which pending tasks start now, where, and on which GPUs. No I/O, no clock.

``plan(candidates, hosts)`` applies these rules, in this order:

1. Order: priority descending, then id ascending (an id seen twice is decided once).
2. Need: ``gpus=N`` (N >= 1) needs N free GPUs on ONE host; ``gpus=0`` needs one free slot on any
   host that offers slots; ``gpus=None`` (the default) needs one GPU on a GPU host or, when no GPU
   is free anywhere, one slot on a CPU-only host. Mixed pools: pass --gpus to be explicit.
3. A GPU is free (whole) when no labtasker task holds or shares it (reserved from launch until
   exit) and no foreign process uses more memory on it than the host's ``max_gpu_memory_used``.
4. Only usable hosts (connected, not suspended, enabled) whose GPUs are known take tasks. Among
   those that fit, the host with the most free units of the needed kind wins (spreads load), then
   the lower ``order`` (position in hosts.toml), then the name. GPUs: the smallest free cards
   first, then ``gpu_order``, then index.
5. Greedy backfill: a task that does not fit does not block lower-priority tasks that do (a
   task wanting many GPUs on one host may wait behind a stream of small ones).
6. Impossible: no configured host could EVER take the task (more GPUs than the largest host has,
   or no slots anywhere), once every host's GPUs are known (unusable hosts may come back).
7. Throttle: a candidate with ``max_running = K`` waits while K tasks of its ``group`` (its
   sweep) are active (``active``) or placed earlier in this plan ("sweep NAME at its limit of
   K running"). It takes no capacity and is not counted as a task ahead of others.
8. GPU needs (``gpu_memory``, ``gpu_type``, ``min_gpu_memory``, see ``gpu_packing``): such a
   task goes to the host whose choice opens the fewest whole GPUs, leaves the least room (best
   fit), then by rank; impossible when every GPU's name and size are known and none matches
   ("no GPU of type A100|H100", "no GPU with at least 40 GiB"). ``max_gpus`` caps new GPUs.
9. Clusters (``cluster``: SLURM) take what no SSH host can start now, up to ``max_jobs``
   (``slots_total``), by order, once no SSH host is ``settling`` (dependents submitted ahead:
   ``core.ahead``). GPU memory needs stay on SSH hosts; a GPU type needs gres naming it.
10. Every other unplaced task waits with a short reason (< 200 chars), like squeue's: the busy
   GPUs and down hosts, or "waiting for a free GPU (N tasks ahead)" when capacity existed at the
   start of this plan but tasks ahead of it took it. Host summaries are built once per plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dispatcher.core import gpu_packing as packing
from dispatcher.core.free_pool import FreePool
from dispatcher.core.gpu_packing import GpuNeed, GpuSlot
from dispatcher.core.reason_text import REASON_LIMIT, clip, plural, summary
from dispatcher.core.slurm import ClusterOffer, cluster_refusal
from dispatcher.core.values import show_size

_clip, _plural, _summary = clip, plural, summary


@dataclass(frozen=True)
class Candidate:
    """A pending task as the scheduler sees it."""

    id: int
    priority: int
    gpus: int | None  # None = 1 GPU on a GPU host, else 1 slot; 0 = one slot; N = N GPUs
    group: str | None = None  # the sweep it belongs to (rule 7)
    max_running: int | None = None  # at most this many of ``group`` active at once
    gpu_memory: int | None = None  # bytes per GPU: shareable (rule 8)
    gpu_type: str | None = None
    min_gpu_memory: int | None = None


@dataclass(frozen=True)
class GpuInfo:
    """One GPU of a host; reasons show ``foreign`` as "GPU 1: 12.3 GiB used by bob (pid 4242)"."""

    index: int
    held_by_task: int | None  # the labtasker task holding it, from launch until exit
    foreign: str | None  # who else uses it, when its used memory is over the host's threshold
    name: str = ""  # as nvidia-smi names it
    total: int | None = None  # bytes
    room: int | None = None  # bytes a sharing task may still declare (gpu_packing rule 3)
    sharers: tuple[int, ...] = ()  # our tasks sharing it by memory


@dataclass(frozen=True)
class HostCapacity:
    """What one configured host can offer right now; every configured host is passed."""

    name: str
    order: int  # position in hosts.toml
    usable: bool  # connected, not suspended, enabled
    unusable_reason: str | None  # "unreachable since 12:03 (...)"; may start with name
    gpus: tuple[GpuInfo, ...]  # () for a CPU-only host or while unknown
    slots_total: int
    slots_used: int
    gpus_known: bool  # False while "auto" GPUs were never queried
    max_tasks_per_gpu: int | None = None  # sharing tasks on one GPU, at most
    max_gpus: int | None = None  # GPUs our tasks use at once, at most
    gpu_order: tuple[int, ...] = ()  # the order GPUs are taken in (others after, by index)
    cluster: ClusterOffer | None = None  # a SLURM cluster: slots are its max_jobs (rule 9)
    settling: bool = False  # its first connection is not decided yet: clusters wait (rule 9)


@dataclass(frozen=True)
class Placement:
    """Start ``task_id`` on ``host`` with ``gpu_ids`` (``()`` for a slot task)."""

    task_id: int
    host: str
    gpu_ids: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """The outcome for every candidate: placed, waiting (with why) or impossible (with why)."""

    placements: tuple[Placement, ...]
    waiting: Mapping[int, str]
    impossible: Mapping[int, str]


class _Host:
    """One host's free units during a plan, and its reason texts built once from the start."""

    def __init__(self, cap: HostCapacity, position: int) -> None:
        self.name = cap.name
        self.rank = (cap.order, cap.name, position)
        self.known = cap.gpus_known
        placeable = cap.usable and cap.gpus_known
        self.placeable = placeable
        busy: dict[int, GpuInfo] = {}
        rank = {i: k for k, i in enumerate(cap.gpu_order)}
        self.slots: dict[int, GpuSlot] = {}
        for gpu in cap.gpus:  # an index listed twice is free only if every entry says so
            new = GpuSlot(gpu.index, gpu.name, gpu.total, gpu.room, rank=rank.get(gpu.index, 99))
            slot = self.slots.setdefault(gpu.index, new)
            if gpu.held_by_task is not None or gpu.foreign is not None or gpu.sharers:
                busy.setdefault(gpu.index, gpu)
                slot.whole = False
            slot.held = slot.held or gpu.held_by_task is not None
            slot.sharers = max(slot.sharers, len(gpu.sharers))
        self.total_gpus = len(self.slots)
        whole = [g for g in self.slots.values() if g.whole] if placeable else []
        whole.sort(key=lambda g: (g.total or 0, g.rank, g.index))
        self.free_gpus = [g.index for g in whole]
        ours = sum(1 for g in self.slots.values() if g.held or g.sharers)
        self.budget = None if cap.max_gpus is None else max(0, cap.max_gpus - ours)
        self.max_sharers = cap.max_tasks_per_gpu
        self.slots_total = cap.slots_total
        self.free_slots = max(0, cap.slots_total - cap.slots_used) if placeable else 0
        self.cpu_only = cap.gpus_known and not cap.gpus
        self.cluster, self.free_jobs = cap.cluster, 0
        if cap.cluster is not None:  # not in the GPU and slot pools: rule 9 places on it
            self.free_jobs, self.free_slots, self.cpu_only = self.free_slots, 0, False
        if not cap.usable:
            state = cap.unusable_reason or "unusable"
            if not state.startswith((f"{cap.name} ", f"{cap.name}:")):  # don't name it twice
                state = f"{cap.name} {state}"
            # The short form drops the parenthesised detail, never cuts a word: "gpu-a
            # unreachable", "gpu-a suspended after 5 failures in a row".
            self.gpu_detail = self.slot_text = state
            self.gpu_short = self.slot_short = state.partition(" (")[0]
        elif not cap.gpus_known:
            self.gpu_detail = self.gpu_short = f"{cap.name} not yet queried"
            self.slot_text = self.slot_short = self.gpu_detail
        elif cap.cluster is not None:
            text = f"{cap.name} {cap.slots_used}/{cap.slots_total} jobs submitted"
            self.slot_text = self.slot_short = self.gpu_detail = self.gpu_short = text
        else:
            self.slot_text = f"{cap.name} {cap.slots_used}/{cap.slots_total} slots used"
            self.slot_short = self.slot_text
            free = f"{len(self.free_gpus)} free" if self.free_gpus else ""
            held = sum(1 for g in busy.values() if g.held_by_task is not None or g.sharers)
            parts = [_busy_text(i, busy[i]) for i in sorted(busy)]
            self.gpu_detail = _clip(f"{cap.name} {', '.join(p for p in [*parts, free] if p)}", 140)
            others = len(busy) - held
            split = [f"{held} by tasks"] * (held > 0) + [f"{others} by others"] * (others > 0)
            self.gpu_short = f"{cap.name} {len(busy)}/{self.total_gpus} GPUs busy"
            self.gpu_short += f" ({', '.join(split)})" if split else ""
            self.gpu_short += f", {free}" if free else ""

    def free_count(self) -> int:  # whole GPUs an exclusive task may take now, max_gpus counted
        n = len(self.free_gpus)
        return n if self.budget is None else min(n, self.budget)

    def take_gpus(self, n: int) -> tuple[int, ...]:
        taken, self.free_gpus = self.free_gpus[:n], self.free_gpus[n:]
        packing.take([self.slots[i] for i in taken], GpuNeed(n))
        self.budget = None if self.budget is None else self.budget - n
        return tuple(taken)

    def take_fit(self, chosen: tuple[GpuSlot, ...], need: GpuNeed) -> tuple[int, ...]:
        opened = sum(1 for g in chosen if g.sharers == 0)
        packing.take(chosen, need)
        self.free_gpus = [i for i in self.free_gpus if self.slots[i].whole]
        self.budget = None if self.budget is None else self.budget - opened
        return tuple(g.index for g in chosen)


def _busy_text(index: int, gpu: GpuInfo) -> str:
    if gpu.sharers and gpu.held_by_task is None:
        ids = ", ".join(map(str, gpu.sharers[:4])) + (" ..." if len(gpu.sharers) > 4 else "")
        free = f", {show_size(gpu.room)} free" if gpu.room is not None else ""
        return f"GPU {index} shared by {_plural(len(gpu.sharers), 'task')[2:]} {ids}{free}"
    if gpu.held_by_task is not None:
        return f"GPU {index} held by task {gpu.held_by_task}"
    return f"GPU {index}: {_clip(gpu.foreign or 'busy', 60)}"


class _Planner:
    """The working state of one plan() call: free units, cached reasons, counts of tasks ahead."""

    def __init__(self, hosts: Sequence[HostCapacity]) -> None:
        self.hosts = sorted((_Host(h, i) for i, h in enumerate(hosts)), key=lambda h: h.rank)
        self.clusters = [h for h in self.hosts if h.cluster is not None]
        self.settling = any(h.settling and h.cluster is None for h in hosts)
        self.gpus = FreePool(self.hosts, lambda h: h.free_count())
        self.slots = FreePool(self.hosts, lambda h: h.free_slots)
        self.cpu_slots = FreePool(self.hosts, lambda h: h.free_slots if h.cpu_only else 0)
        self.all_known = all(h.known for h in self.hosts)
        self.largest = max(self.hosts, key=lambda h: h.total_gpus)  # the first of equals: by rank
        self.any_slots = any(h.slots_total > 0 for h in self.hosts)
        self.any_cpu_slots = any(h.cpu_only and h.slots_total > 0 for h in self.hosts)
        # Hosts not yet queried are usually "auto" GPU servers: they don't make it "GPU or slot".
        gpu_side, cpu_side = self.largest.total_gpus > 0, self.any_cpu_slots
        self.default_what = (
            "GPU or slot" if gpu_side and cpu_side else "slot" if cpu_side else "GPU"
        )
        # Tasks already decided in this plan, by what they took or (waiting) want; "either" is a
        # waiting default task, which competes for slots only where CPU-only hosts offer some.
        self.ahead = {"gpu": 0, "slot": 0, "either": 0}
        self.blocked: dict[tuple[str, int], str] = {}
        self.at_start = (self.gpus.most(), self.slots.most(), self.cpu_slots.most())

    def place(self, task_id: int, kind: str, n: int) -> Placement | None:
        """Take capacity for one task (rules 2 to 4), or None when nothing fits now.

        The pools' best host is the rule's choice: most free units, then order. O(log hosts).
        """
        if kind == "default":
            kind = "gpu" if self.gpus.most() >= 1 else "cpu"
        if kind == "gpu":
            host = self.gpus.best()
            if host is None or len(host.free_gpus) < n:
                return None
            return Placement(task_id, host.name, host.take_gpus(n))
        host = (self.slots if kind == "slot" else self.cpu_slots).best()
        if host is None:
            return None
        host.free_slots -= 1
        return Placement(task_id, host.name, ())

    def place_fit(self, task_id: int, need: GpuNeed) -> Placement | None:
        """Rule 8: the host whose choice opens fewest whole GPUs, leaves least room, ranks first."""
        best: tuple[tuple[int, ...], _Host, tuple[GpuSlot, ...]] | None = None
        for h in self.hosts:
            if not h.placeable:
                continue
            chosen = packing.choose(list(h.slots.values()), need, max_sharers=h.max_sharers,
                            budget=h.budget)  # fmt: skip
            if chosen is None:
                continue
            opened = [g for g in chosen if g.whole]
            score = (len(opened), packing.leftover(chosen, need), -sum(g.room or 0 for g in opened),
                     -h.free_count(), *h.rank[:2])  # fmt: skip
            if best is None or score < best[0]:
                best = (score, h, chosen)  # type: ignore[assignment]
        if best is None:
            return None
        return Placement(task_id, best[1].name, best[1].take_fit(best[2], need))

    def takers(self, kind: str, need: GpuNeed) -> list[_Host]:
        """The clusters that could ever take this need (rule 9)."""
        return [
            c for c in self.clusters if c.cluster and not cluster_refusal(c.cluster, kind, need)
        ]

    def place_cluster(self, task_id: int, kind: str, need: GpuNeed) -> Placement | None:
        """Rule 9: the first cluster, by order, with a job to spare that can take the need."""
        for h in self.takers(kind, need) if not self.settling else []:
            if h.free_jobs > 0:
                h.free_jobs -= 1
                return Placement(task_id, h.name, ())
        return None

    def never_fits(self, need: GpuNeed) -> str | None:
        """Rule 8's impossible: every GPU's name and size known, and none could take ``need``."""
        gpus = [g for h in self.hosts for g in h.slots.values()]
        if not self.all_known or not gpus or any(not g.name or g.total is None for g in gpus):
            return None
        return packing.never_reason(gpus, need)

    def fit_blocked(self, need: GpuNeed) -> str:
        """Why a task with GPU needs waits: the start state of the hosts with GPUs."""
        hosts = [h for h in self.hosts if not h.known or h.total_gpus >= need.count]
        prefix = packing.waiting_prefix(need)
        return _summary(prefix, [h.gpu_detail for h in hosts], [h.gpu_short for h in hosts])

    def impossible(self, kind: str, n: int) -> str | None:
        """Why no configured host could ever take this need (rule 6), or None."""
        if n < 0:
            return f"asks for {n} GPUs; use --gpus 0 (a slot) or more"
        if not self.all_known:
            return None
        big = self.largest
        if kind == "gpu" and n > big.total_gpus:
            if not big.total_gpus:
                return f"needs {_plural(n, 'GPU')}; no configured host has GPUs"
            return f"needs {n} GPUs on one host; the largest host ({big.name}) has {big.total_gpus}"
        if kind == "slot" and not self.any_slots:
            return "needs a slot (--gpus 0); no host offers slots: set `slots` in hosts.toml"
        if kind == "default" and not big.total_gpus and not self.any_cpu_slots:
            return "needs a GPU or a slot; no configured host has GPUs or slots"
        return None

    def waiting(self, kind: str, n: int) -> str:
        """Why the task waits (rule 7). Called after place() found nothing."""
        gpus, slots, cpu_slots = self.at_start
        if kind == "gpu":
            fit, what = gpus >= n, "a free GPU" if n == 1 else f"{n} free GPUs on one host"
            ahead = self.ahead["gpu"] + self.ahead["either"]
        elif kind == "slot":
            fit, what = slots >= 1, "a free slot"
            ahead = self.ahead["slot"] + self.ahead["either"] * self.any_cpu_slots
        else:
            fit, what = gpus >= 1 or cpu_slots >= 1, f"a free {self.default_what}"
            ahead = sum(self.ahead.values())
        if fit:  # there was room when this plan began: tasks ahead in this plan took it
            return f"waiting for {what} ({_plural(ahead, 'task')} ahead)"
        if (kind, n) not in self.blocked:
            self.blocked[kind, n] = self._blocked(kind, n)
        return self.blocked[kind, n]

    def _blocked(self, kind: str, n: int) -> str:
        """The start state of every host that could ever take the need, summarised."""
        if kind == "gpu":
            gpu = [h for h in self.hosts if not h.known or h.total_gpus >= n]
            prefix = "no free GPU: " if n == 1 else f"needs {n} free GPUs on one host: "
            return _summary(prefix, [h.gpu_detail for h in gpu], [h.gpu_short for h in gpu])
        if kind == "slot":
            slot = [h for h in self.hosts if not h.known or h.slots_total]
            return _summary(
                "no free slot: ", [h.slot_text for h in slot], [h.slot_short for h in slot]
            )
        detail, short = [], []
        for h in self.hosts:
            if not h.known or h.total_gpus:
                detail.append(h.gpu_detail)
                short.append(h.gpu_short)
            elif h.cpu_only and h.slots_total:
                detail.append(h.slot_text)
                short.append(h.slot_short)
        return _summary(f"no free {self.default_what}: ", detail, short)


def need_of(c: Candidate) -> tuple[str, int, GpuNeed]:
    """Rule 2's kind of need ("default", "slot", "gpu"), its GPU count, and its GPU needs."""
    n = 1 if c.gpus is None else c.gpus
    need = GpuNeed(n, c.gpu_memory, c.gpu_type, c.min_gpu_memory)
    kind = "default" if c.gpus is None else "slot" if c.gpus == 0 else "gpu"
    return ("gpu" if need.constrained else kind), n, need


def plan(
    candidates: Sequence[Candidate],
    hosts: Sequence[HostCapacity],
    active: Mapping[str, int] | None = None,
) -> Plan:
    """Decide every candidate: placed, waiting or impossible, by the rules in the module doc.

    ``active`` counts the launching and running tasks of each group (sweep) for rule 7.
    """
    if not hosts:
        why = "no hosts configured; add one to hosts.toml"
        return Plan((), {}, {c.id: why for c in candidates})
    planner = _Planner(hosts)
    placements: list[Placement] = []
    waiting: dict[int, str] = {}
    impossible: dict[int, str] = {}
    decided: set[int] = set()
    running = dict(active or {})
    for c in sorted(candidates, key=lambda c: (-c.priority, c.id)):
        if c.id in decided:
            continue
        decided.add(c.id)
        kind, n, need = need_of(c)
        fit = need.constrained
        never = planner.impossible(kind, n) or (planner.never_fits(need) if fit else None)
        if never is not None and not planner.takers(kind, need):  # else a cluster can take it
            impossible[c.id] = never
            continue
        limit, group = c.max_running, c.group
        if limit is not None and group is not None and running.get(group, 0) >= limit:
            waiting[c.id] = _clip(f"sweep {group} at its limit of {limit} running", REASON_LIMIT)
            continue
        placement = planner.place_fit(c.id, need) if fit else planner.place(c.id, kind, n)
        placement = placement or planner.place_cluster(c.id, kind, need)
        if placement is not None:
            placements.append(placement)
            if c.group is not None:
                running[c.group] = running.get(c.group, 0) + 1
        else:
            said = [planner.fit_blocked(need) if fit else planner.waiting(kind, n)]
            full = [h.slot_short for h in planner.takers(kind, need)]
            said = said if len(full) < len(planner.hosts) else []  # only clusters: just them
            waiting[c.id] = _clip("; ".join([*said, *full]), REASON_LIMIT)
        taken = ("gpu" if placement.gpu_ids else "slot") if placement else kind
        planner.ahead["either" if taken == "default" else taken] += 1
    return Plan(tuple(placements), waiting, impossible)
