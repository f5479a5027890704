"""SLURM clusters as hosts: submitting a 1,000-task sweep, and the load a queue puts on slurmctld.

Runs the test suite's private cluster (``tests/slurm.py``: munged, slurmctld and slurmd on this
machine, one node with 16 CPUs and 4 fake GPUs, MaxArraySize 8), so it needs root and SLURM
installed (``apt-get install slurm-wlm munge``); without them it reports why and measures
nothing. Every SLURM command the login node's user runs goes through a logging shim (a script
named sbatch, squeue, scontrol or scancel, first on the PATH, that appends its name and the time
to a log and execs the real command): labtasker's helper gets the shims through the host's
``python`` (a wrapper that puts them on the PATH), the hand-written loop through its own PATH.
Jobs are held (``--begin=now+1hour``) so that only submission is measured; every job is
scancelled after each run, and the cluster and sshd hosts are stopped even on failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    Config,
    Row,
    Section,
    Stats,
    cli_argv,
    cli_env,
    fmt_seconds,
    interrupt,
    poll,
    ratio,
    run_cli,
)

from dispatcher.store.queue import Store
from tests.slurm import SlurmCluster, slurm_installed
from tests.sshd import HostPlan, SshdHosts

SWEEP = 1000
HELD = 200  # tasks queued while SLURM commands are counted
HOLD = "--begin=now+1hour"
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel")
REAL_MAX_ARRAY = 1001  # SLURM's default MaxArraySize
SHIM = """#!/bin/bash
start=$EPOCHREALTIME
{real} "$@"
rc=$?
echo "{name} $start $EPOCHREALTIME" >> {log}
exit $rc
"""
COMMAND = "python3 bench/run.py --splice --only slurm"


@dataclass
class Bench:
    """The cluster, its login node's sshd host, a client HOME, and the shims' log."""

    cluster: SlurmCluster
    home: Path
    shared: Path  # the login user's: workdirs, shims, log (the "shared file system")
    log: Path
    python: Path  # python3 with the shims first on its PATH

    @property
    def user(self) -> str:
        return self.cluster.login.user

    def logged(self) -> list[tuple[str, float, float]]:
        """(command, start, end) of each SLURM command the shims ran (time.time())."""
        return [
            (n, float(a), float(b)) for n, a, b in map(str.split, self.log.read_text().splitlines())
        ]

    def calls(self, since: float = 0.0, until: float = math.inf) -> Counter[str]:
        """The SLURM commands the shims logged as started between two times (time.time())."""
        return Counter(name for name, start, _ in self.logged() if since <= start < until)

    def listed(self, prefix: str) -> int:
        """Our jobs' elements squeue lists (as root: not counted) whose name starts so."""
        out = self.cluster.admin("squeue", "-h", "-r", "-u", self.user, "-o", "%j").stdout
        return sum(line.startswith(prefix) for line in out.split())

    def clear(self) -> None:
        """scancel every job of ours (as root) and wait until none is queued."""
        self.cluster.admin("scancel", "-u", self.user, check=False)
        poll(lambda: not self.cluster.jobs(), "jobs cancelled", 60)
        self.log.write_text("")

    def hosts_toml(self, work: Path, workdir: str) -> Path:
        lines = ["[hosts.slurm]", 'kind = "slurm"', f"workdir = {json.dumps(workdir)}",
                 f"gres = {json.dumps(self.cluster.gres)}", f'sbatch_args = ["{HOLD}"]',
                 f"max_jobs = {SWEEP}", "sync = false",
                 f"python = {json.dumps(str(self.python))}"]  # fmt: skip
        path = work / "hosts.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


@contextlib.contextmanager
def started() -> Iterator[Bench]:
    """Start sshd, the cluster and the shims; everything is stopped and removed on exit."""
    hosts = SshdHosts.start([HostPlan("spare", "a", None)])  # the cluster adds its login node
    cluster: SlurmCluster | None = None
    try:
        cluster = SlurmCluster.start(hosts)
        shared = Path(tempfile.mkdtemp(prefix="bench-", dir=hosts.base))
        shared.chmod(0o777)
        shims, log = shared / "shims", shared / "slurm-calls.log"
        shims.mkdir(mode=0o755)
        log.touch(mode=0o666)
        log.chmod(0o666)
        for name in COMMANDS:
            real = shutil.which(name)
            assert real is not None
            (shims / name).write_text(SHIM.format(name=name, log=log, real=real))
            (shims / name).chmod(0o755)
        python = shared / "python-with-shims"
        python.write_text(f'#!/bin/sh\nPATH={shims}:$PATH exec python3 "$@"\n')
        python.chmod(0o755)
        home = hosts.write_client_home(shared / "client-home")
        yield Bench(cluster, home, shared, log, python)
    finally:
        if cluster is not None:
            cluster.close()  # scancels every job first
        hosts.close()


def by_hand(b: Bench) -> tuple[float, Counter[str]]:
    """1,000 ``sbatch --wrap`` in a shell loop over one SSH login: (seconds until all are
    listed by squeue, the commands used)."""
    shims = b.shared / "shims"
    loop = (f"PATH={shims}:$PATH; cd {b.shared}; i=0; while [ $i -lt {SWEEP} ]; do "
            f"sbatch --parsable {HOLD} --job-name=hand-$i --output=/dev/null "
            "--wrap=\"true $i\" >/dev/null || exit 1; i=$((i+1)); done")  # fmt: skip
    env = {**cli_env(b.home), "HOME": str(b.cluster.login.dir)}
    start = time.perf_counter()
    subprocess.run(b.cluster.login.login_argv(loop), env=env, check=True, timeout=1800)
    poll(lambda: b.listed("hand-") == SWEEP, "the 1,000 jobs listed", 60)
    took = time.perf_counter() - start
    return took, b.calls()


@dataclass
class Dispatched:
    """A ``dispatch`` of ``n`` held tasks, measured until squeue lists all of them."""

    listed: float  # s from dispatch starting until squeue lists all
    calls: Counter[str]  # the SLURM commands used until then
    at: float  # time.time() when all were listed
    proc: subprocess.Popen[bytes]
    recorded: float = 0.0  # s from dispatch starting until every task has its job id
    sbatch: tuple[float, float, float] = (0.0, 0.0, 0.0)  # see sbatch_times


def dispatch_held(b: Bench, n: int, tag: str) -> Dispatched:
    """Queue ``n`` tasks, start ``dispatch`` (the caller stops it), wait until squeue lists
    all ``n`` elements, then until the queue holds every task's job id."""
    work = b.shared / tag
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    db = work / "queue.duckdb"
    run_cli(db, "queue", "add", f"--grid=i={','.join(map(str, range(n)))}", "--", "true",
            "%{i}", home=b.home, cwd=work)  # fmt: skip
    toml = b.hosts_toml(work, str(work / "cluster"))
    start, wall = time.perf_counter(), time.time()
    proc = subprocess.Popen(
        cli_argv(db, "dispatch", "--hosts", str(toml)), env=cli_env(b.home), cwd=work,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        poll(lambda: proc.poll() is None and b.listed("labtasker-") == n, f"{n} queued", 900)
        d = Dispatched(time.perf_counter() - start, b.calls(), time.time(), proc)
        poll(lambda: job_ids(db) == n, f"{n} job ids recorded", 300)
        d.recorded = time.perf_counter() - start
        d.sbatch = sbatch_times(b, wall)
    except BaseException:
        interrupt(proc, 30)
        raise
    return d


def sbatch_times(b: Bench, wall: float) -> tuple[float, float, float]:
    """(s from ``wall`` to the first sbatch, s from the first sbatch starting to the last one
    ending, s of that spent in sbatch itself)."""
    runs = [(start, end) for name, start, end in b.logged() if name == "sbatch"]
    if not runs:
        return (0.0, 0.0, 0.0)
    first, last = runs[0][0], max(end for _, end in runs)
    return (first - wall, last - first, sum(end - start for start, end in runs))


def job_ids(db: Path) -> int:
    """How many tasks of the queue have a SLURM job id (read as ``queue ls --json`` does)."""
    return sum(1 for t in Store(db, lock_timeout=30).tasks() if t.job_id)


@dataclass
class Submission:
    """The submission runs: seconds per run, and the commands of the last run of each."""

    hand: list[float] = field(default_factory=list)
    listed: list[float] = field(default_factory=list)  # labtasker, until squeue lists all
    recorded: list[float] = field(default_factory=list)  # labtasker, until all job ids kept
    sbatch: list[tuple[float, float, float]] = field(default_factory=list)  # sbatch_times
    hand_calls: Counter[str] = field(default_factory=Counter)
    ours_calls: Counter[str] = field(default_factory=Counter)


def submission(b: Bench, runs: int) -> Submission:
    """Interleaved runs of the loop by hand and of labtasker's dispatch."""
    got = Submission()
    for k in range(runs):
        took, got.hand_calls = by_hand(b)
        got.hand.append(took)
        b.clear()
        d = dispatch_held(b, SWEEP, f"sweep{k}")
        interrupt(d.proc, 60)
        got.listed.append(d.listed)
        got.recorded.append(d.recorded)
        got.sbatch.append(d.sbatch)
        got.ours_calls = d.calls
        b.clear()
    return got


def while_held(b: Bench, window: float) -> tuple[float, Counter[str]]:
    """Commands per minute over ``window`` s while ``HELD`` tasks wait in SLURM."""
    d = dispatch_held(b, HELD, "held")
    try:
        time.sleep(window)  # a measurement window, not a wait for a condition
        if d.proc.poll() is not None:
            raise SystemExit(f"dispatch exited ({d.proc.returncode}) with {HELD} tasks queued")
        calls = b.calls(d.at, d.at + window)
    finally:
        interrupt(d.proc, 60)
    b.clear()
    return sum(calls.values()) / (window / 60), calls


def _fmt(calls: Counter[str]) -> str:
    return ", ".join(f"{calls[c]} {c}" for c in COMMANDS if calls[c]) or "none"


def run(cfg: Config) -> Section:
    section = Section(
        title="SLURM cluster: submitting 1,000 tasks, and polling",
        command=COMMAND,
        intro=(
            "The test suite's private SLURM 22.05 cluster on this machine (one node, 16 CPUs, 4 "
            "fake GPUs, **MaxArraySize 8**), its login node an sshd host on loopback. Jobs are "
            f'held (`sbatch_args = ["{HOLD}"]`, `max_jobs = {SWEEP}`) so only submission is '
            "measured. SLURM commands are counted by logging shims first on the login user's "
            "PATH. Submission: from `dispatch` starting (or the loop's `ssh` starting) until "
            f"squeue lists all {SWEEP:,} elements; by hand is one `sbatch --wrap` per task in a "
            "shell loop over one SSH login. Polling: commands per minute while "
            f"{HELD} held tasks wait, default `poll_interval` (30 s)."
        ),
    )
    if os.geteuid() != 0 or not slurm_installed():
        why = "needs root" if os.geteuid() != 0 else "needs slurm-wlm and munge installed"
        section.rows.append(Row("not measured", None, "s", note=why))
        section.notes.append(f"Skipped: a private SLURM cluster {why} (see tests/slurm.py).")
        return section
    runs, window = cfg.pick(3, 1), cfg.pick(150.0, 60.0)
    with started() as b:
        b.clear()
        got = submission(b, runs)
        per_min, held_calls = while_held(b, window)
    _fill(section, got, per_min, held_calls, window)
    return section


def _fill(section: Section, got: Submission, per_min: float, held_calls: Counter[str],
          window: float) -> None:  # fmt: skip
    hand, listed, recorded = Stats.of(got.hand), Stats.of(got.listed), Stats.of(got.recorded)
    first, span, busy = ([t[k] for t in got.sbatch] for k in range(3))
    arrays = math.ceil(SWEEP / 8)
    real = math.ceil(SWEEP / REAL_MAX_ARRAY)
    ours_n, hand_n = sum(got.ours_calls.values()), sum(got.hand_calls.values())
    section.rows += [
        Row(f"labtasker: {SWEEP:,} tasks queued in SLURM (squeue lists all)", listed, "s",
            vs=ratio(listed.median, hand.median, higher_is_better=False)),
        Row("labtasker: ... and every task's job id in the queue", recorded, "s",
            vs=ratio(recorded.median, hand.median, higher_is_better=False)),
        Row("labtasker: dispatch start to its first sbatch", Stats.of(first), "s"),
        Row("labtasker: first sbatch to last (the helper submitting)", Stats.of(span), "s",
            note=f"of which in sbatch itself: median {fmt_seconds(statistics.median(busy))}"),
        Row(f"by hand: {SWEEP:,} x sbatch --wrap over one SSH login", hand, "s"),
        Row("labtasker: SLURM commands for the sweep", Stats.of([ours_n]), "",
            vs=f"{hand_n / ours_n:.1f}x fewer" if ours_n else "", note=_fmt(got.ours_calls)),
        Row("by hand: SLURM commands for the sweep", Stats.of([hand_n]), "",
            note=_fmt(got.hand_calls)),
        Row(f"SLURM commands per minute, {HELD} tasks queued", Stats.of([per_min]), "/min",
            target="<= 4", met=per_min <= 4, note=f"{_fmt(held_calls)} in {window:.0f} s"),
    ]  # fmt: skip
    per_task = (statistics.median(span) - statistics.median(busy)) / SWEEP
    section.notes += [
        f"MaxArraySize is 8 on the test cluster, so labtasker needs {arrays} arrays (one "
        f"`sbatch` each) for {SWEEP:,} tasks with equal options. SLURM's default MaxArraySize "
        f"is {REAL_MAX_ARRAY}: on such a cluster the same sweep is {real} sbatch call"
        f"{'s' if real > 1 else ''} ({arrays // real}x fewer than here), against {SWEEP:,} by "
        "hand.",
        "Command counts are from the last run of each: the helper runs one `scontrol show "
        "config` (MaxArraySize) per connection, one `sbatch` per array and one `squeue` of all "
        "our jobs per poll; the hand loop counts only its `sbatch` calls (a user would also "
        "check squeue). Each shim is a bash script: both sides pay its start per command.",
        "Where labtasker's time goes: before the first sbatch, the CLI start, the queue read, "
        f"the SSH login and the helper's start; then the helper prepares each task's run "
        f"directory on the shared workdir (about {per_task * 1000:.1f} ms a task here, the "
        "time between sbatch calls: a few file creations and renames, which cost more on a "
        "network file system) and runs one sbatch per array. The job ids of a round's launch "
        "replies are written to the queue in one statement after the round's moves.",
        "Polling: the helper runs one `squeue` of all our jobs once per `poll_interval`, for "
        "the runs it watches and the controller's probes alike (one more only to check a "
        "failed `sbatch` or why SLURM ended a job, never two within 5 s), so while tasks just "
        "wait polls are 30 s apart (at most 2 a minute) whatever their number; while the "
        f"{HELD} tasks waited the shims saw "
        f"{_fmt(held_calls)} in {window:.0f} s.",
        f"Machine: {os.cpu_count()} cores shared by slurmctld, slurmd, sshd, the helper and the "
        "controller (and other work on this machine: the by-hand loop varies most); the "
        "cluster's 16 CPUs are declared, not real. Absolute times on a real cluster depend on "
        "slurmctld's load and the file system; the command counts do not.",
    ]
