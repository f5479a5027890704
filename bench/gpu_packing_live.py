"""GPU packing, live: a seeded sweep of 200 mixed tasks really dispatched over sshd hosts whose
GPUs are the test suite's stub nvidia-smi, packed by memory against one task per GPU.

Each task runs ``task.sh``: it adds a row per GPU of its CUDA_VISIBLE_DEVICES to the stub's
per-process table (the card then shows the memory it holds, as a real one would, until the
task's process ends) and sleeps its drawn duration. The same sweep is queued twice, each time in
a fresh queue on the same hosts: small and medium tasks declaring ``--gpu-memory`` (packing),
then the same tasks as ``--gpus 1`` (one task per GPU); whole-GPU tasks are ``--gpus 1`` in
both. Figures come from the queue afterwards: makespan from the first ``started_at`` to the last
``finished_at``, and memory the tasks held over the cards' memory, both integrated over time.
Durations are seconds, scaled down from the simulated sweep's minutes (bench/gpu_packing.py).
"""

from __future__ import annotations

import random
import subprocess
import time
from dataclasses import dataclass

from common import BenchHosts, Config, Row, Section, Stats, bench_hosts, cli_argv, cli_env

from dispatcher.api import Queue
from dispatcher.core.models import Task
from dispatcher.store.queue import Store
from tests.sshd import FakeGpu

GIB_MIB = 1024
#: Each host's cards: (name, GiB).
CARDS: dict[str, list[tuple[str, int]]] = {
    "h1": [("NVIDIA H100 80GB HBM3", 80), ("NVIDIA H100 80GB HBM3", 80),
           ("NVIDIA A100-SXM4-40GB", 40)],
    "h2": [("NVIDIA H100 80GB HBM3", 80), ("NVIDIA A100-SXM4-40GB", 40),
           ("NVIDIA A100-SXM4-40GB", 40)],
}  # fmt: skip
TASKS = 200
#: kind: (share of the sweep, GiB declared (lo, hi), seconds (lo, hi)); a small or medium task
#: uses 1 GiB less than it declares; a whole-GPU task declares nothing and uses 20-38 GiB.
MIX = {"small": (0.55, (8, 10), (0.5, 1.5)), "medium": (0.30, (20, 30), (1.0, 3.0)),
       "whole": (0.15, (20, 38), (2.0, 5.0))}  # fmt: skip
SEED = 19
TASK_SH = r"""#!/bin/sh
# task.sh MIB SECONDS: hold MIB on each of our GPUs for SECONDS. The stub nvidia-smi lists this
# process with its MIB while it lives (rows "GPU_INDEX, PID, MIB" in live.csv beside the stub).
live=$(dirname "$(command -v nvidia-smi)")/live.csv
for i in $(echo "$CUDA_VISIBLE_DEVICES" | tr , ' '); do echo "$i, $$, $1" >> "$live"; done
sleep "$2"
"""


@dataclass(frozen=True)
class Job:
    kind: str
    declares: int  # GiB of --gpu-memory when packing (0: a whole-GPU task)
    uses: int  # MiB it holds on its GPU
    seconds: float


def sweep(seed: int) -> list[Job]:
    """The generated sweep: ``TASKS`` tasks of the MIX kinds, in a shuffled order."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for kind, (share, (lo, hi), (s_lo, s_hi)) in MIX.items():
        for _ in range(round(TASKS * share)):
            gib = rng.randint(lo, hi)
            seconds = round(rng.uniform(s_lo, s_hi), 2)
            if kind == "whole":
                jobs.append(Job(kind, 0, gib * GIB_MIB, seconds))
            else:
                jobs.append(Job(kind, gib, (gib - 1) * GIB_MIB, seconds))
    rng.shuffle(jobs)
    return jobs


@dataclass(frozen=True)
class Outcome:
    makespan: float  # s, first start to last finish
    utilisation: float  # memory held x time over all cards' memory x makespan
    busy: float  # cards with at least one task, time-weighted share
    most_sharing: int  # most tasks on one card at once
    wall: float  # s, the whole `dispatch` process


def _cards(hosts: BenchHosts) -> None:
    """Give each host its cards, idle, and an empty per-process table."""
    for host in hosts.hosts:
        host.reset_gpus()
        host.write_gpus([FakeGpu(i, f"GPU-{host.alias}-{i}", name, 0, gib * GIB_MIB)
                         for i, (name, gib) in enumerate(CARDS[host.alias])])  # fmt: skip


def run_mode(hosts: BenchHosts, jobs: list[Job], *, packing: bool) -> Outcome:
    """Queue the sweep in a fresh queue, dispatch it to the end, and measure it."""
    _cards(hosts)
    mode = "packing" if packing else "exclusive"
    work = hosts.work / mode
    work.mkdir()
    work.chmod(0o755)
    db, script = work / "queue.duckdb", work / "task.sh"
    script.write_text(TASK_SH)
    script.chmod(0o755)
    toml = work / "hosts.toml"
    toml.write_text("".join(f'[hosts.{a}]\ngpus = "auto"\n\n' for a in hosts.aliases))
    queue = Queue(db)
    for i, job in enumerate(jobs):
        share = packing and job.kind != "whole"
        queue.add(
            f"{script} %{{mib}} %{{secs}} %{{i}}",
            args=[{"mib": job.uses, "secs": job.seconds, "i": i}],
            gpus=None if share else 1,
            gpu_memory=f"{job.declares}GiB" if share else None,
        )
    start = time.perf_counter()
    argv = cli_argv(db, "dispatch", "--hosts", str(toml))
    done = subprocess.run(argv, env=cli_env(hosts.home), cwd=work, capture_output=True,
                          text=True, timeout=900, check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0 or f"{len(jobs)} succeeded" not in done.stdout:
        raise SystemExit(f"dispatch ({mode}) failed ({done.returncode}): {done.stdout[-800:]}"
                         f"{done.stderr[-1500:]}")  # fmt: skip
    return measure(Store(db, lock_timeout=30).tasks(), jobs, wall)


def measure(tasks: list[Task], jobs: list[Job], wall: float) -> Outcome:
    """Makespan, memory utilisation, busy cards and most tasks per card, from the queue."""
    spans: list[tuple[float, float, tuple[str, int], int]] = []
    for task, job in zip(tasks, jobs, strict=True):
        assert task.started_at and task.finished_at and task.host and task.gpu_ids
        begin, end = task.started_at.timestamp(), task.finished_at.timestamp()
        for gpu in task.gpu_ids:
            spans.append((begin, end, (task.host, gpu), job.uses))
    first = min(s[0] for s in spans)
    makespan = max(s[1] for s in spans) - first
    total = sum(gib for cards in CARDS.values() for _, gib in cards) * GIB_MIB
    held = sum((end - begin) * mib for begin, end, _, mib in spans)
    events = sorted([(b, 1, card) for b, _, card, _ in spans] +
                    [(e, -1, card) for _, e, card, _ in spans])  # fmt: skip
    on: dict[tuple[str, int], int] = {}
    busy_time, most, last = 0.0, 0, first
    for at, step, card in events:  # ends sort before starts at the same instant
        busy_time += sum(1 for n in on.values() if n) * (at - last)
        last = at
        on[card] = on.get(card, 0) + step
        most = max(most, on[card])
    cards = sum(len(c) for c in CARDS.values())
    return Outcome(makespan, held / (total * makespan), busy_time / (cards * makespan), most, wall)


def run(cfg: Config) -> Section:
    """Makespan and memory utilisation, packing against one task per GPU, on sshd hosts."""
    jobs = sweep(SEED)
    with bench_hosts(len(CARDS), 1, "gpulive", gpus=len(CARDS["h1"])) as hosts:
        packed = run_mode(hosts, jobs, packing=True)
        exclusive = run_mode(hosts, jobs, packing=False)
    return section(jobs, packed, exclusive)


def section(jobs: list[Job], packed: Outcome, exclusive: Outcome) -> Section:
    cards = "; ".join(f"{h}: " + " + ".join(f"{g} GiB" for _, g in c) for h, c in CARDS.items())
    mix = "; ".join(f"{k}: {s:.0%}, {lo}-{hi} GiB, {a:g}-{b:g} s"
                    for k, (s, (lo, hi), (a, b)) in MIX.items())  # fmt: skip
    busy = sum(j.seconds for j in jobs)
    out = Section(
        "GPU packing, live on sshd hosts",
        "python3 bench/run.py --only gpu_packing_live",
        f"The same question as the simulation above, answered by a real `labtasker dispatch`:"
        f" {len(jobs)} tasks (seed {SEED}) over 2 sshd hosts on loopback whose stub nvidia-smi"
        f" lists {cards}. Mix ({mix}; {busy:.0f} s of task time in all). Packing: small and"
        " medium tasks declare `--gpu-memory` (they hold 1 GiB less); one task per GPU: the same"
        " tasks as `--gpus 1`; whole-GPU tasks are `--gpus 1` in both. Each task adds its"
        " memory to the stub's per-process table, so the dispatcher's GPU readings show it, and"
        " sleeps its duration. Both modes run in this one run, each in a fresh queue on the same"
        " hosts. Makespan: first `started_at` to last `finished_at` in the queue. Utilisation:"
        " memory the tasks hold times their runtime, over all cards' memory times the makespan."
        " Durations are seconds rather than the simulation's minutes, so launch and reading"
        " latencies weigh more here.",
    )
    gain = exclusive.makespan / packed.makespan
    out.rows += [
        Row("makespan, packing by memory", Stats.of([packed.makespan]), "s",
            vs=f"{gain:.1f}x shorter", target="shorter than one task per GPU", met=gain > 1),
        Row("makespan, one task per GPU", Stats.of([exclusive.makespan]), "s"),
        Row("GPU memory utilisation, packing", Stats.of([packed.utilisation * 100]), "%",
            vs=f"{packed.utilisation / exclusive.utilisation:.1f}x"),
        Row("GPU memory utilisation, one task per GPU",
            Stats.of([exclusive.utilisation * 100]), "%"),
        Row("cards with a task, packing (time-weighted)", Stats.of([packed.busy * 100]), "%"),
        Row("cards with a task, one task per GPU", Stats.of([exclusive.busy * 100]), "%"),
        Row("`dispatch` wall time, packing", Stats.of([packed.wall]), "s"),
        Row("`dispatch` wall time, one task per GPU", Stats.of([exclusive.wall]), "s"),
    ]  # fmt: skip
    out.notes.append(f"One run of each mode (n = 1). Packing put up to {packed.most_sharing}"
                     " tasks on one card at once.")  # fmt: skip
    return out


if __name__ == "__main__":
    print(run(Config(quick=True)).markdown())
