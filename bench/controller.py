"""Controller cost (benchmark 6): CPU and memory of ``dispatch`` and of the helper on a host.

Two cases on 4 sshd hosts with 16 slots each: 64 long tasks (``sleep``) running and nothing else
(idle watching), and the same with a million pending tasks behind them. CPU is read from
/proc/PID/stat over fixed windows once all 64 run; memory is the peak RSS (VmHWM).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

from common import (
    BenchHosts,
    Config,
    Row,
    Section,
    Stats,
    bench_hosts,
    cli_argv,
    cli_env,
    interrupt,
    poll,
)
from queue_scale import grid_args

from dispatcher.core.models import TaskState
from dispatcher.store.queue import Store

HOSTS, SLOTS = 4, 16
RUNNING = HOSTS * SLOTS
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int, key: str = "VmHWM") -> float:
    """A /proc/PID/status memory figure (VmHWM: peak RSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {key} for pid {pid}")


def cpu_share(pids: list[int], window: float) -> float:
    """Percent of one core the processes used together over ``window`` seconds."""
    before, start = sum(cpu_seconds(p) for p in pids), time.monotonic()
    time.sleep(window)  # measuring a rate over a fixed window, not synchronising
    used = sum(cpu_seconds(p) for p in pids) - before
    return 100 * used / (time.monotonic() - start)


def helpers(bh: BenchHosts) -> list[list[int]]:
    """Per host, labtasker's Python processes there (the helper and what it forked per task)."""
    found = []
    for host in bh.hosts:
        procs = [p for p in host.processes() if p.cmdline.split(" ", 1)[0].endswith("python3")]
        found.append([p.pid for p in procs])
    return found


def measure(bh: BenchHosts, pending: int, windows: int, window: float) -> dict[str, list[float]]:
    """Start dispatch on 64 sleeps plus ``pending`` more; CPU per window, peak memory."""
    db = bh.work / f"controller-{pending}.duckdb"
    env = cli_env(bh.home)
    total = RUNNING + pending
    if pending:
        sizes = (100, 100, 100) if total >= 10**6 else (100, max(total // 100, 1))
        add = grid_args(*sizes)
        add[add.index("--") + 1 :] = ["sleep", "600", *[f"%{{{k}}}" for k in "abc"[: len(sizes)]]]
    else:
        add = ["--grid", f"i={','.join(map(str, range(RUNNING)))}", "--", "sleep", "600", "%{i}"]
    subprocess.run(
        cli_argv(db, "queue", "add", *add), env=env, check=True, stdout=subprocess.DEVNULL
    )
    total = sum(Store(db).counts().values())
    proc = subprocess.Popen(
        cli_argv(db, "dispatch", "--hosts", str(bh.hosts_toml())),
        env=env,
        cwd=bh.work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out: dict[str, list[float]] = {"cpu": [], "helper_cpu": []}
    try:
        store = Store(db, lock_timeout=60)
        poll(lambda: store.counts()[TaskState.RUNNING] == RUNNING, "64 tasks running", 300)
        time.sleep(3)  # let the launch burst settle: the idle state is what is measured
        per_host = helpers(bh)
        everyone = [pid for pids in per_host for pid in pids]
        for _ in range(windows):
            out["cpu"].append(cpu_share([proc.pid], window))
            out["helper_cpu"].append(cpu_share(everyone, window) / len(per_host))
        out["rss"] = [memory_mb(proc.pid)]
        out["helper_rss"] = [sum(memory_mb(p, "VmRSS") for p in pids) for pids in per_host]
        out["helper_procs"] = [float(len(pids)) for pids in per_host]
        out["total"] = [float(total)]
    finally:
        interrupt(proc, 60)
    for host in bh.hosts:  # the sleeps live on after dispatch: end them before the next case
        for p in host.processes():
            if p.cmdline.startswith("sleep 600"):
                os.kill(p.pid, signal.SIGKILL)
    return out


def run(cfg: Config) -> Section:
    """Idle watching and a million pending tasks."""
    windows, window = cfg.pick(5, 3), cfg.pick(4.0, 2.0)
    big = cfg.pick(10**6, 100_000)
    with bench_hosts(HOSTS, SLOTS, "controller") as bh:
        idle = measure(bh, 0, windows, window)
        full = measure(bh, big - RUNNING, windows, window)
    section = Section(
        "Controller cost",
        "python3 bench/run.py --only controller",
        f"`labtasker dispatch` on {HOSTS} sshd hosts x {SLOTS} slots with {RUNNING} tasks"
        f" (`sleep 600`) running, measured after all {RUNNING} run (3 s settle). CPU: share of"
        f" one core over {windows} windows of {window:g} s (/proc/PID/stat). Memory: peak RSS"
        " (VmHWM) of the dispatch process since it started, including its start-up and the"
        f" launch burst. Helper: per host, the same windows. Second case: {big:,} tasks in the"
        f" queue, {RUNNING} running and the rest pending.",
    )
    section.rows += [
        Row(
            f"dispatch CPU, watching {RUNNING} tasks",
            Stats.of(idle["cpu"]),
            "%",
            target="< 2% of one core",
            met=Stats.of(idle["cpu"]).median < 2,
        ),
        Row(
            f"dispatch CPU, {RUNNING} running + {full['total'][0] - RUNNING:,.0f} pending",
            Stats.of(full["cpu"]),
            "%",
        ),
        Row(f"dispatch peak RSS, {RUNNING} running", Stats.of(idle["rss"]), "MB"),
        Row(
            f"dispatch peak RSS, {full['total'][0]:,.0f} tasks in the queue",
            Stats.of(full["rss"]),
            "MB",
            target="< 150 MB" if big >= 10**6 else "",
            met=full["rss"][0] < 150 if big >= 10**6 else None,
        ),
        Row("helper CPU per host (16 tasks each)", Stats.of(idle["helper_cpu"]), "%"),
        Row(
            "helper RSS per host, all its Python processes",
            Stats.of(idle["helper_rss"]),
            "MB",
            vs=f"{statistics.median(idle['helper_procs']):.0f} processes per host",
        ),
    ]
    return section
