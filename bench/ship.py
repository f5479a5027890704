"""Shipping project snapshots (issue "The code follows the task"): first sync and a one-file
change to 3 sshd hosts against ``rsync -a`` over the same hosts, and dispatch throughput with
shipping on and off.

labtasker's sync time is what ``dispatch`` reports per host (``snapshot ... sent ... in T s``,
the connection already open): the slowest host of the three. rsync's is the wall time of three
``rsync -a`` processes run at once, one per host, each opening its own connection as rsync does.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from common import BenchHosts, Config, Row, Section, Stats, bench_hosts, cli_argv, cli_env, ratio

HOSTS = 3
SENT = re.compile(r"(\S+): snapshot \w+ sent: (\d+) files?, .* in ([\d.]+) s")


def make_project(root: Path, files: int, total: int) -> None:
    """``files`` files of random bytes, ``total`` bytes in all, 50 to a directory."""
    size = total // files
    for n in range(files):
        d = root / f"pkg{n // 50:03}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{n:05}.py").write_bytes(os.urandom(size))


def dispatch(bh: BenchHosts, db: Path, hosts: Path, n: int) -> tuple[float, str]:
    """Run ``dispatch`` until the queue drains; (wall seconds, stdout)."""
    start = time.perf_counter()
    done = subprocess.run(
        cli_argv(db, "dispatch", "--hosts", str(hosts)),
        env=cli_env(bh.home), cwd=db.parent.parent, capture_output=True, text=True,
        timeout=1800, check=False,
    )  # fmt: skip
    took = time.perf_counter() - start
    if done.returncode != 0 or f"{n} succeeded" not in done.stdout:
        raise SystemExit(f"dispatch failed: {done.stdout[-800:]}{done.stderr[-800:]}")
    return took, done.stdout


def add(bh: BenchHosts, db: Path, hosts: Path, *words: str) -> None:
    done = subprocess.run(
        cli_argv(db, "queue", "add", "--hosts", str(hosts), *words),
        env=cli_env(bh.home), cwd=db.parent.parent, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"queue add failed: {done.stderr[-800:]}")


def write_hosts(bh: BenchHosts, proj: Path, slots: int, sync: bool, state: str) -> Path:
    path = proj / "hosts.toml"
    text = f"[defaults]\ngpus = 0\nslots = {slots}\nsync = {str(sync).lower()}\n"
    text += f'state_dir = "~/{state}"\n'
    text += "".join(f"[hosts.{a}]\n" for a in bh.aliases)
    path.write_text(text)
    return path


def labtasker_sync(bh: BenchHosts, db: Path, hosts: Path, tag: str) -> tuple[float, int]:
    """One task per host (``sleep 2``, one slot each, so one lands on each host); the slowest
    host's reported sync time and the files sent in all."""
    add(bh, db, hosts, "--grid", f"i={tag}1,{tag}2,{tag}3", "--cmd", "sleep 2; echo %{i}")
    _, out = dispatch(bh, db, hosts, 3)
    sent = SENT.findall(out)
    if len(sent) != HOSTS:
        raise SystemExit(f"expected one sync per host, got {sent}:\n{out}")
    return max(float(t) for _, _, t in sent), sum(int(f) for _, f, _ in sent)


def rsync_sync(bh: BenchHosts, proj: Path, dest: str) -> float:
    """Three ``rsync -a`` at once, one per host; their wall time."""
    ssh = " ".join(bh.ssh_argv())
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                "rsync",
                "-a",
                "--exclude",
                ".labtasker",
                "--exclude",
                "hosts.toml",
                "-e",
                ssh,
                f"{proj}/",
                f"{a}:{dest}/",
            ],
            env=cli_env(bh.home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a in bh.aliases
    ]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"rsync failed: {err[-800:]}")
    return time.perf_counter() - start


def sync_runs(bh: BenchHosts, cfg: Config, files: int, total: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"first": [], "rsync-first": [], "one": [], "rsync-one": []}
    counts: list[int] = []
    for r in range(cfg.pick(3, 1)):
        proj = bh.work / f"proj{r}"
        make_project(proj, files, total)
        db = proj / ".labtasker" / "queue.duckdb"
        state, dest = f".lt-ship{r}", f"rsync{r}"
        hosts = write_hosts(bh, proj, 1, True, state)
        t, _ = labtasker_sync(bh, db, hosts, "a")
        times["first"].append(t)
        times["rsync-first"].append(rsync_sync(bh, proj, dest))
        changed = proj / "pkg000" / "mod00007.py"
        changed.write_bytes(os.urandom(changed.stat().st_size))
        t, sent = labtasker_sync(bh, db, hosts, "b")
        times["one"].append(t)
        counts.append(sent)
        times["rsync-one"].append(rsync_sync(bh, proj, dest))
    times["files"] = [float(c) for c in counts]
    return times


def throughput_runs(bh: BenchHosts, cfg: Config, n: int) -> dict[str, list[float]]:
    """``n`` ``true`` tasks of one 50-file snapshot, shipping on and off, interleaved."""
    rates: dict[str, list[float]] = {"on": [], "off": [], "sent": []}
    for r in range(cfg.pick(3, 1)):
        for sync in (True, False):
            proj = bh.work / f"tp{r}{sync}"
            make_project(proj, 50, 50 * 2048)
            db = proj / ".labtasker" / "queue.duckdb"
            hosts = write_hosts(bh, proj, 8, sync, f".lt-tp{r}{'on' if sync else 'off'}")
            grid = "i=" + ",".join(map(str, range(n)))
            start = time.perf_counter()
            add(bh, db, hosts, "--grid", grid, "--", "true", "%{i}")
            _, out = dispatch(bh, db, hosts, n)
            rates["on" if sync else "off"].append(n / (time.perf_counter() - start))
            if sync:
                rates["sent"].append(float(len(SENT.findall(out))))
    return rates


def run(cfg: Config) -> Section:
    """The snapshot benchmarks of the issue: first sync, one-file change, throughput."""
    files, total = cfg.pick(5000, 500), cfg.pick(100 * 1024**2, 10 * 1024**2)
    n = cfg.pick(1000, 200)
    section = Section(
        "Shipping the project",
        "python3 bench/run.py --only ship",
        f"A generated project of {files:,} files / {total // 1024**2} MiB (random bytes, 50 files"
        f" a directory) sent to {HOSTS} real sshd hosts on loopback. labtasker: `queue add` of"
        " three `sleep 2` tasks, then `dispatch` with one slot per host, so one task lands on"
        " each; the figure is the slowest host's sync as dispatch reports it (`sent ... in T s`:"
        " asking, sending, materialising; its connection already open). rsync: `rsync -a` of the"
        f" same tree to each host, the {HOSTS} at once, each opening its own ssh connection."
        " Then one file is changed and both sync again. Throughput: "
        f"{n:,} `true` tasks of one 50-file snapshot over the {HOSTS} hosts (8 slots each), from"
        " `queue add` to the last result, with shipping on (`sync = true`) and off (`sync ="
        " false`), interleaved. Every run writes to directories of its own, all removed when"
        " the hosts stop: on this file system, making files soon after deleting thousands is"
        " slow, which would slow whichever tool ran first after a clean-up.",
    )
    with bench_hosts(HOSTS, 8, "ship") as bh:
        s = sync_runs(bh, cfg, files, total)
        tp = throughput_runs(bh, cfg, n)
    first, r_first = Stats.of(s["first"]), Stats.of(s["rsync-first"])
    one, r_one = Stats.of(s["one"]), Stats.of(s["rsync-one"])
    on, off = Stats.of(tp["on"]), Stats.of(tp["off"])
    section.rows += [
        Row("labtasker, first sync", first, "s",
            vs=f"{first.median / r_first.median:.2f} of rsync's time",
            target="within 1.5x of rsync", met=first.median <= 1.5 * r_first.median),
        Row("rsync -a, first sync", r_first, "s"),
        Row("labtasker, one file changed", one, "s",
            vs=f"{ratio(one.median, r_one.median, higher_is_better=False)} rsync;"
            f" {max(s['files']):.0f} file(s) sent in all hosts' syncs",
            target="< 1 s and no slower than rsync",
            met=one.median < 1 and one.median <= r_one.median),
        Row("rsync -a, one file changed", r_one, "s"),
        Row("labtasker, shipping on", on, "tasks/s",
            vs=f"{on.median / off.median:.2f} of shipping off;"
            f" snapshot sent {max(tp['sent']):.0f} times ({HOSTS} hosts)",
            target="within 10% of shipping off", met=on.median >= 0.9 * off.median),
        Row("labtasker, shipping off", off, "tasks/s"),
    ]  # fmt: skip
    return section


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    print(run(Config(quick=quick)).markdown())
