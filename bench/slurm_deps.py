"""SLURM cluster: a chain of dependent tasks, labtasker against ``sbatch --dependency`` by hand.

Runs the test suite's private cluster (see bench/slurm.py: root and SLURM installed, else it
reports why and measures nothing). A chain of ``LINKS`` tasks, each ``--after`` the one before
and sleeping ``NAP`` s, goes through ``dispatch`` with the default ``poll_interval`` (30 s);
the same chain by hand is one ``sbatch --wrap --dependency=afterok:PREVIOUS`` per link over
one SSH login. Each link appends its start and end time to a log on the shared directory; the
gap is a link's start minus its predecessor's end: how soon a dependent starts once its
dependency ended. Runs alternate between the two.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

from common import Config, Row, Section, Stats, cli_argv, cli_env, interrupt, poll, ratio, run_cli
from slurm import Bench, started

from tests.slurm import slurm_installed

LINKS, NAP = 5, 3
COMMAND = "python3 bench/run.py --splice --only slurm_deps"
#: One link (``%s``: its number): its start and end, as epoch seconds, appended to the log.
LINK = "echo start %s $(date +%%s.%%N) >> {log}; sleep {nap}; echo end %s $(date +%%s.%%N) >> {log}"


def gaps(log: Path) -> list[float]:
    """Each link's start minus its predecessor's end, in chain order."""
    times: dict[tuple[str, int], float] = {}
    for line in log.read_text().splitlines():
        what, link, at = line.split()
        times[what, int(link)] = float(at)
    return [times["start", k] - times["end", k - 1] for k in range(1, LINKS)]


def by_hand(b: Bench, tag: str) -> tuple[float, list[float]]:
    """The chain as sbatch --dependency=afterok over one SSH login: (s until the last link
    ended, the gaps)."""
    log = b.shared / f"{tag}.log"
    step = LINK.format(log=log, nap=NAP).replace("$(", "\\$(") % ("$i", "$i")  # run there
    loop = (f"cd {b.shared}; dep=; i=0; while [ $i -lt {LINKS} ]; do "
            f"dep=$(sbatch --parsable --job-name=hand-$i --output=/dev/null "
            f"${{dep:+--dependency=afterok:$dep}} --wrap=\"{step}\") || exit 1; "
            "i=$((i+1)); done")  # fmt: skip
    env = {**cli_env(b.home), "HOME": str(b.cluster.login.dir)}
    start = time.perf_counter()
    subprocess.run(b.cluster.login.login_argv(loop), env=env, check=True, timeout=300)
    poll(lambda: log.exists() and log.read_text().count("end ") == LINKS, "the chain", 300)
    return time.perf_counter() - start, gaps(log)


def labtasker(b: Bench, tag: str) -> tuple[float, list[float]]:
    """The chain through ``dispatch``: (s from its start until the last link ended, the gaps)."""
    work = b.shared / tag
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    db, log = work / "queue.duckdb", work / "chain.log"
    cmd = LINK.format(log=log, nap=NAP) % ("%{k}", "%{k}")
    for k in range(LINKS):
        after = ["--after", str(k)] if k else []  # ids start at 1: link k-1 is task k
        run_cli(db, "queue", "add", f'--args={{"k": {k}}}', "--gpus", "0", *after, "--cmd",
                cmd, home=b.home, cwd=work)  # fmt: skip
    toml = work / "hosts.toml"
    toml.write_text(f'[hosts.slurm]\nkind = "slurm"\nworkdir = "{work / "cluster"}"\n'
                    f'gres = "{b.cluster.gres}"\nsync = false\n')  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(
        cli_argv(db, "dispatch", "--hosts", str(toml)), env=cli_env(b.home), cwd=work,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        poll(lambda: log.exists() and log.read_text().count("end ") == LINKS, "the chain", 600)
        took = time.perf_counter() - start
    finally:
        interrupt(proc, 60)
    return took, gaps(log)


def run(cfg: Config) -> Section:
    section = Section(
        title="SLURM cluster: a chain of dependent tasks",
        command=COMMAND,
        intro=(
            f"A chain of {LINKS} tasks on the private test cluster (bench/slurm.py's), each "
            f"`--after` the one before and sleeping {NAP} s. labtasker: `queue add` then "
            "`dispatch` with the default `poll_interval` (30 s); by hand: one `sbatch --wrap "
            "--dependency=afterok:PREVIOUS` per task over one SSH login. The gap is a task's "
            "start minus its dependency's end, from times the tasks log on the shared directory."
        ),
    )
    if os.geteuid() != 0 or not slurm_installed():
        why = "needs root" if os.geteuid() != 0 else "needs slurm-wlm and munge installed"
        section.rows.append(Row("not measured", None, "s", note=why))
        return section
    ours: list[float] = []
    hand: list[float] = []
    our_gaps: list[float] = []
    hand_gaps: list[float] = []
    with started() as b:
        b.clear()
        for k in range(cfg.pick(3, 1)):
            took, got = labtasker(b, f"chain{k}")
            ours.append(took)
            our_gaps += got
            took, got = by_hand(b, f"hand{k}")
            hand.append(took)
            hand_gaps += got
            b.clear()
    mine, theirs = Stats.of(our_gaps), Stats.of(hand_gaps)
    section.rows += [
        Row("labtasker: gap from a task's end to its dependent's start", mine, "s",
            vs=ratio(mine.median, theirs.median, higher_is_better=False)),
        Row("by hand (sbatch --dependency=afterok): the same gap", theirs, "s"),
        Row(f"labtasker: the {LINKS}-task chain, dispatch to last end", Stats.of(ours), "s",
            vs=ratio(statistics.median(ours), statistics.median(hand), higher_is_better=False)),
        Row(f"by hand: the {LINKS}-task chain, first sbatch to last end", Stats.of(hand), "s"),
    ]  # fmt: skip
    section.notes += [
        "labtasker submits each dependent as soon as its dependency has a SLURM job, with "
        "`--dependency=afterok` on that job, so SLURM starts it the moment the dependency "
        "ends, as for the chain by hand, and without waiting for a poll (30 s here). Before "
        "it starts the task, labtasker's wrapper on the compute node reads the dependency's "
        "exit record (its own rule: a failure with attempts left holds the dependent back).",
        "The chain's total includes labtasker's start (CLI, queue, SSH login, helper) and the "
        f"{LINKS} tasks' own {LINKS * NAP} s; the by-hand total starts at its first sbatch.",
        f"Machine: {os.cpu_count()} cores shared by slurmctld, slurmd, sshd, the helper and the "
        "controller.",
    ]
    return section
