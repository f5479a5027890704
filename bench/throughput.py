"""Dispatch throughput (benchmarks 1 and 7): trivial tasks over 4 sshd hosts with 8 slots each.

labtasker end to end (``queue add`` until ``dispatch`` has recorded every result) against GNU
parallel ``-S 8/h1,...`` over the same hosts, plain and through OpenSSH ControlMaster, runs
interleaved; then the same with a login shell that takes 250 ms to start on every host.
"""

from __future__ import annotations

import os
import subprocess
import time

from common import (
    BenchHosts,
    Config,
    Row,
    Section,
    Stats,
    add_and_dispatch,
    bench_hosts,
    cli_env,
    ratio,
)

HOSTS, SLOTS = 4, 8
SLOW_SHELL = 0.25
#: Plain GNU parallel opens a connection per job, so its rate is the same for any number of
#: jobs; it runs at most this many (at ~10 jobs/s, 2,000 would take over 3 minutes a run).
PLAIN_MAX = 500
#: CPU seconds of each labtasker run (its CLI processes), in run order.
CPU_SECONDS: list[float] = []


def labtasker_run(bh: BenchHosts, n: int, tag: str, wrap: tuple[str, ...] = ()) -> float:
    """Seconds from ``queue add`` of ``n`` ``true`` tasks to dispatch exiting with all recorded."""
    db = bh.work / f"tp-{tag}.duckdb"
    before = os.times()
    add, took = add_and_dispatch(db, n, bh.hosts_toml(), home=bh.home, cwd=bh.work, wrap=wrap)
    after = os.times()
    # CPU of `queue add` + `dispatch` (waited children): the machine is shared, wall is noisy.
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    CPU_SECONDS.append(cpu)
    return add + took


def parallel_argv(bh: BenchHosts) -> list[str]:
    """GNU parallel spreading jobs over every host, ``SLOTS`` at a time each."""
    hosts = ",".join(f"{SLOTS}/{a}" for a in bh.aliases)
    ssh = " ".join(bh.ssh_argv())
    return ["parallel", "--will-cite", "-S", hosts, "--ssh", ssh, "true", "{}"]


def parallel_run(bh: BenchHosts, n: int) -> float:
    """Seconds for GNU parallel to run ``n`` ``true`` jobs on the hosts."""
    start = time.perf_counter()
    done = subprocess.run(
        parallel_argv(bh),
        input="".join(f"{i}\n" for i in range(n)),
        env=cli_env(bh.home),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"GNU parallel failed ({done.returncode}): {done.stderr[-1500:]}")
    return took


def with_masters(bh: BenchHosts, on: bool) -> None:
    """Switch ControlMaster on (and pre-warm one master per host) or off (and stop them)."""
    env = cli_env(bh.home)
    if not on:
        for alias in bh.aliases:
            subprocess.run(
                [*bh.ssh_argv(), "-O", "exit", alias], env=env, capture_output=True, check=False
            )
    bh.set_control_master(on)
    if on:
        for alias in bh.aliases:
            subprocess.run([*bh.ssh_argv(), alias, "true"], env=env, check=True, timeout=30)


def measure(bh: BenchHosts, n: int, runs: int, *, plain: bool) -> dict[str, list[float]]:
    """Interleaved runs of each tool; seconds per run by tool (plain parallel: per
    ``min(n, PLAIN_MAX)`` jobs, scaled to ``n``)."""
    times: dict[str, list[float]] = {"labtasker": [], "parallel": [], "parallel-cm": []}
    for r in range(runs):
        times["labtasker"].append(labtasker_run(bh, n, f"{n}-{r}"))
        if plain:
            m = min(n, PLAIN_MAX)
            times["parallel"].append(parallel_run(bh, m) * n / m)
        with_masters(bh, True)
        try:
            times["parallel-cm"].append(parallel_run(bh, n))
        finally:
            with_masters(bh, False)
    return {k: v for k, v in times.items() if v}


def rates(n: int, seconds: list[float]) -> Stats:
    return Stats.of([n / s for s in seconds])


def run(cfg: Config) -> Section:
    """Benchmarks 1 (throughput) and 7 (slow login shells)."""
    n = cfg.pick(2000, 200)
    n_slow = cfg.pick(500, 100)
    runs = cfg.pick(3, 2)
    section = Section(
        "Dispatch throughput and slow login shells",
        "python3 bench/run.py --only throughput",
        f"{n} tasks of `true` over {HOSTS} real sshd hosts on loopback (127.0.0.2-5, one user"
        f" each), {SLOTS} slots per host ({HOSTS * SLOTS} at once) for every tool. labtasker:"
        f" `queue add --grid i=0..{n - 1} -- true %{{i}}`, then `dispatch` until every result is"
        " recorded (both timed). GNU parallel: `parallel -S 8/h1,8/h2,8/h3,8/h4 true {}`, plain"
        f" (a new ssh connection per job; {min(n, PLAIN_MAX)} jobs, as its rate does not depend"
        " on their number) and with `ControlMaster auto` + `ControlPersist`"
        f" (masters pre-warmed before the timer starts). Runs interleaved, {runs} of each. Slow"
        f" shell: every host user's `~/.bashrc` starts with `sleep {SLOW_SHELL}`, {n_slow} tasks.",
    )
    with bench_hosts(HOSTS, SLOTS, "throughput") as bh:
        fresh = [bh.ssh_time("h1") for _ in range(3)]
        t = measure(bh, n, runs, plain=True)
        fast = measure(bh, n_slow, runs, plain=False) if n_slow != n else t
        bh.set_slow_shell(SLOW_SHELL)
        try:
            slow_ssh = [bh.ssh_time("h1") for _ in range(3)]
            slow = measure(bh, n_slow, runs, plain=False)
        finally:
            bh.set_slow_shell(0)
    ours, par, cm = rates(n, t["labtasker"]), rates(n, t["parallel"]), rates(n, t["parallel-cm"])
    s_ours, s_cm = rates(n_slow, slow["labtasker"]), rates(n_slow, slow["parallel-cm"])
    f_ours, f_cm = rates(n_slow, fast["labtasker"]), rates(n_slow, fast["parallel-cm"])
    yes = ours.median >= 250 and ours.median >= 5 * cm.median
    section.rows += [
        Row(
            "labtasker, end to end",
            ours,
            "tasks/s",
            target=">= 250 tasks/s and >= 5x parallel+CM",
            met=yes,
        ),
        Row(
            "GNU parallel -S (new ssh per job)",
            par,
            "tasks/s",
            vs=f"labtasker {ratio(ours.median, par.median, higher_is_better=True)}",
        ),
        Row(
            "GNU parallel -S + ControlMaster",
            cm,
            "tasks/s",
            vs=f"labtasker {ratio(ours.median, cm.median, higher_is_better=True)}",
        ),
        Row(
            f"labtasker, {SLOW_SHELL * 1000:.0f} ms login shell",
            s_ours,
            "tasks/s",
            vs=f"{s_ours.median / f_ours.median:.2f} of its fast-shell rate"
            f" ({f_ours.median:.1f} tasks/s, {n_slow} tasks)",
            target="within 20% of the fast-shell rate",
            met=s_ours.median >= 0.8 * f_ours.median,
        ),
        Row(
            f"GNU parallel + ControlMaster, {SLOW_SHELL * 1000:.0f} ms login shell",
            s_cm,
            "tasks/s",
            vs=f"labtasker {ratio(s_ours.median, s_cm.median, higher_is_better=True)};"
            f" {s_cm.median / f_cm.median:.2f} of its fast-shell rate ({f_cm.median:.1f} tasks/s)",
        ),
        Row("one fresh `ssh h1 true` (reference)", Stats.of(fresh), "s"),
        Row(
            f"one fresh `ssh h1 true`, {SLOW_SHELL * 1000:.0f} ms login shell (check)",
            Stats.of(slow_ssh),
            "s",
        ),
    ]
    return section


def main() -> None:
    """Quick runs while tuning: ``python3 bench/throughput.py -n 400 --runs 1``."""
    import argparse

    parser = argparse.ArgumentParser(description="labtasker dispatch throughput on sshd hosts")
    parser.add_argument("-n", type=int, default=400, help="tasks per run (default 400)")
    parser.add_argument("--runs", type=int, default=1, help="repetitions (default 1)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time GNU parallel, plain and with ControlMaster",
    )
    parser.add_argument(
        "--slow-shell", action="store_true", help=f"{SLOW_SHELL * 1000:.0f} ms login shells"
    )
    parser.add_argument("--profile", metavar="FILE", help="run dispatch under py-spy (raw output)")
    opts = parser.parse_args()
    wrap = ("py-spy", "record", "-r", "200", "--threads", "-f", "raw", "-o", opts.profile, "--")
    with bench_hosts(HOSTS, SLOTS, "throughput") as bh:
        if opts.slow_shell:
            bh.set_slow_shell(SLOW_SHELL)
        if opts.compare:
            times = measure(bh, opts.n, opts.runs, plain=True)
        else:
            runs = range(opts.runs)
            w = wrap if opts.profile else ()
            times = {"labtasker": [labtasker_run(bh, opts.n, str(r), w) for r in runs]}
    for tool, seconds in times.items():
        s = rates(opts.n, seconds)
        print(f"{tool}: median {s.median:.1f} tasks/s (min {s.lo:.1f}, max {s.hi:.1f}, n={s.n})")
    if CPU_SECONDS and not opts.profile:
        each = ", ".join(f"{c:.2f}" for c in CPU_SECONDS)
        per_task = 1000 * min(CPU_SECONDS) / opts.n
        print(f"labtasker CPU (queue add + dispatch): {each} s; {per_task:.1f} ms/task")


if __name__ == "__main__":
    main()
