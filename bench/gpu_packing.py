"""GPU packing: a sweep of 200 mixed tasks, shared by memory against one task per GPU.

An event-driven simulation over labtasker's own placement code: at each start or end, every
host's view is built by ``dispatch.capacity.host_capacity`` from an nvidia-smi-shaped inventory
(each running task's processes show the memory it uses) and the running tasks, and
``core.scheduler.plan`` decides what starts where. Time is simulated (task durations drawn per
task), so makespans are minutes of the simulated sweep, not of this machine. The same generated
sweep runs twice: tasks declaring ``--gpu-memory`` (packing), and the same tasks as ``--gpus 1``
(one task per GPU, today's exclusive meaning). Whole-GPU tasks are ``--gpus 1`` in both.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from common import Config, Row, Section, Stats

from dispatcher.config.hosts import make_host
from dispatcher.core.models import Task, TaskState
from dispatcher.core.scheduler import Candidate, plan
from dispatcher.dispatch.capacity import host_capacity

GIB = 2**30
#: The simulated fleet: host -> its cards (name, GiB).
FLEET: dict[str, list[tuple[str, int]]] = {
    "gpu-a": [("NVIDIA A100-SXM4-80GB", 80)] * 4,
    "gpu-b": [("NVIDIA A100-SXM4-40GB", 40)] * 4,
    "gpu-c": [("NVIDIA RTX 6000 Ada Generation", 48)] * 2,
}
TASKS = 200
#: kind: (share of the sweep, GiB used (lo, hi), minutes (lo, hi)); whole: needs a whole GPU.
MIX = {"small": (0.55, (3, 10), (5, 15)), "medium": (0.30, (12, 30), (10, 30)),
       "whole": (0.15, (20, 38), (20, 60))}  # fmt: skip


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    uses: int  # bytes it holds on its GPU
    minutes: float


def sweep(seed: int) -> list[Job]:
    """The generated sweep: ``TASKS`` tasks of the MIX kinds, in a shuffled order."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for kind, (share, (lo, hi), (m_lo, m_hi)) in MIX.items():
        for _ in range(round(TASKS * share)):
            jobs.append(Job(0, kind, int(rng.uniform(lo, hi) * GIB), rng.uniform(m_lo, m_hi)))
    rng.shuffle(jobs)
    return [Job(i, j.kind, j.uses, j.minutes) for i, j in enumerate(jobs, 1)]


def _inventory(host: str, running: list[tuple[Task, int]]) -> dict[str, object]:
    """What nvidia-smi would say on ``host``: each running task's processes and memory."""
    used = [0] * len(FLEET[host])
    procs = []
    for task, uses in running:
        for i in task.gpu_ids or []:
            used[i] += uses
            procs.append({"gpu_uuid": f"{host}-{i}", "pid": 1000 + task.id, "user": "me",
                          "used_memory_mib": uses // 2**20, "run_id": task.run_id})  # fmt: skip
    gpus = [
        {"index": i, "uuid": f"{host}-{i}", "name": name, "memory_used_mib": used[i] // 2**20,
         "memory_total_mib": gib * 1024}
        for i, (name, gib) in enumerate(FLEET[host])
    ]  # fmt: skip
    return {"gpus": gpus, "processes": procs, "error": None}


def simulate(jobs: list[Job], packing: bool) -> tuple[float, float, float]:
    """(makespan in minutes, GPU memory utilisation, mean tasks per busy GPU) of one run."""
    specs = {h: make_host(h, {"gpus": "auto"}) for h in FLEET}
    by_id = {j.id: j for j in jobs}
    pending = set(by_id)
    running: dict[int, tuple[Task, float]] = {}
    ends: list[tuple[float, int]] = []
    now, mem_time, share_time, busy_time = 0.0, 0.0, 0.0, 0.0
    while pending or running:
        active = {h: [(t, by_id[t.id].uses) for t, _ in running.values() if t.host == h]
                  for h in FLEET}  # fmt: skip
        caps = [host_capacity(specs[h], order=k, usable=True, unusable_reason=None,
                              inventory=_inventory(h, active[h]), active=[t for t, _ in active[h]])
                for k, h in enumerate(FLEET)]  # fmt: skip
        cands = [
            Candidate(i, 0, 1, gpu_memory=by_id[i].uses + GIB if packing else None)
            if by_id[i].kind != "whole" else Candidate(i, 0, 1)
            for i in sorted(pending)
        ]  # fmt: skip
        for p in plan(cands, caps).placements:
            job = by_id[p.task_id]
            memory = job.uses + GIB if packing and job.kind != "whole" else None
            run_id = f"t{job.id}-a1-x"
            task = Task(job.id, TaskState.RUNNING, {}, "t", "t", host=p.host,
                        gpu_ids=list(p.gpu_ids), run_id=run_id, gpu_memory=memory)  # fmt: skip
            running[job.id] = (task, now + job.minutes)
            heapq.heappush(ends, (now + job.minutes, job.id))
            pending.discard(job.id)
        if not ends:
            raise SystemExit(f"{len(pending)} tasks can never start; the fleet is too small")
        until, done = heapq.heappop(ends)
        step = until - now
        gpus_used: dict[tuple[str, int], int] = {}
        for task, _ in running.values():
            mem_time += by_id[task.id].uses * step
            for i in task.gpu_ids or []:
                gpus_used[task.host or "", i] = gpus_used.get((task.host or "", i), 0) + 1
        share_time += sum(gpus_used.values()) * step
        busy_time += len(gpus_used) * step
        now = until
        del running[done]
    total = sum(gib for cards in FLEET.values() for _, gib in cards) * GIB
    return now, mem_time / (total * now), share_time / busy_time if busy_time else 0.0


def run(cfg: Config) -> Section:
    """Makespan and memory utilisation, packing against one task per GPU, over seeded sweeps."""
    seeds = range(cfg.pick(5, 2))
    rows: dict[str, list[float]] = {k: [] for k in ("mp", "me", "up", "ue", "sp", "ratio")}
    for seed in seeds:
        jobs = sweep(seed)
        mp, up, sp = simulate(jobs, packing=True)
        me, ue, _ = simulate(jobs, packing=False)
        for key, value in (("mp", mp), ("me", me), ("up", up * 100), ("ue", ue * 100),
                           ("sp", sp), ("ratio", me / mp)):  # fmt: skip
            rows[key].append(value)
    cards = ", ".join(f"{h}: {len(c)} x {c[0][1]} GiB" for h, c in FLEET.items())
    mix = "; ".join(f"{k}: {s:.0%}, {lo}-{hi} GiB, {a}-{b} min"
                    for k, (s, (lo, hi), (a, b)) in MIX.items())  # fmt: skip
    section = Section(
        "GPU packing, simulated over the placement code",
        "python3 bench/run.py --only gpu_packing",
        f"{TASKS} tasks over {cards} (the cards as nvidia-smi would list them), {len(seeds)}"
        f" seeded sweeps, each run both ways. Mix ({mix}); small and medium tasks declare what"
        " they use plus 1 GiB with `--gpu-memory` when packing and are `--gpus 1` otherwise;"
        " whole tasks are `--gpus 1` in both. Placement is labtasker's own code"
        " (`dispatch.capacity.host_capacity` then `core.scheduler.plan` at every start and end);"
        " time is simulated, so makespans are minutes of the sweep. Utilisation: memory the"
        " tasks hold, integrated over time, over all cards' memory times the makespan.",
    )
    ratio = Stats.of(rows["ratio"]).median
    section.rows += [
        Row("makespan, packing by memory", Stats.of(rows["mp"]), "min",
            vs=f"{ratio:.1f}x shorter", target="shorter than one task per GPU",
            met=all(r > 1 for r in rows["ratio"])),
        Row("makespan, one task per GPU", Stats.of(rows["me"]), "min"),
        Row("GPU memory utilisation, packing", Stats.of(rows["up"]), "%",
            vs=f"{Stats.of(rows['up']).median / Stats.of(rows['ue']).median:.1f}x"),
        Row("GPU memory utilisation, one task per GPU", Stats.of(rows["ue"]), "%"),
        Row("tasks per busy GPU, packing (time-weighted)", Stats.of(rows["sp"]), "tasks"),
    ]  # fmt: skip
    return section


if __name__ == "__main__":
    print(run(Config(quick=True)).markdown())
