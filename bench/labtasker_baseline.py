"""Labtasker 2.8.0 (benchmark 2): submit 1,000 tasks and run them through its ``loop`` worker.

Labtasker 2.8.0 runs in its own venv (bench/out/venv-labtasker, made on first use with pip) in
managed-local server mode (``LABTASKER_ROOT``, ``--auto-start-local-server``; a daemon on a Unix
socket). Compared with labtasker-ssh on a ``local`` host, one task at a time like one worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OUT, Config, Row, Section, Stats, add_and_dispatch, ratio

VERSION = "2.8.0"
VENV = OUT / "venv-labtasker"
SUBMIT = """
import sys, time
from labtasker import api
n = int(sys.argv[1])
start = time.perf_counter()
for i in range(n):
    api.submit_task({"i": i})
print(time.perf_counter() - start)
"""


def venv() -> Path:
    """The venv's bin directory, with Labtasker installed (created once)."""
    bin_dir = VENV / "bin"
    if not (bin_dir / "labtasker").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", f"labtasker=={VERSION}"], check=True)
    return bin_dir


def theirs(bin_dir: Path, n: int) -> tuple[float, float]:
    """(submit seconds, run seconds) for Labtasker 2.8.0 in a fresh root."""
    root = Path(tempfile.mkdtemp(prefix="lt28-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    env["LABTASKER_ROOT"] = str(root)
    lt = str(bin_dir / "labtasker")
    try:
        # Start the daemon outside the timers, as a user's already running server would be.
        subprocess.run(
            [lt, "--auto-start-local-server", "queue", "list"],
            env=env,
            check=True,
            capture_output=True,
        )
        start = time.perf_counter()
        subprocess.run(
            [str(bin_dir / "python"), "-c", SUBMIT, str(n)],
            env=env,
            check=True,
            capture_output=True,
        )
        submit = time.perf_counter() - start
        idle = 0.2  # the loop exits after this long without a task; subtracted below
        start = time.perf_counter()
        done = subprocess.run(
            [lt, "loop", "--idle-timeout", str(idle), "--", "true", "%{i}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        took = time.perf_counter() - start - idle
        count = subprocess.run(
            [lt, "task", "count", "--status", "succeeded"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or f'"count": {n}' not in count.stdout:
            raise SystemExit(
                f"Labtasker {VERSION} loop failed ({done.returncode}):"
                f" {done.stderr[-1000:]} {count.stdout} {count.stderr[-500:]}"
            )
        return submit, took
    finally:
        subprocess.run(
            [str(bin_dir / "labtasker-server"), "stop", "--labtasker-root", str(root), "--force"],
            env=env,
            capture_output=True,
            check=False,
        )
        subprocess.run(["rm", "-rf", str(root)], check=False)


def ours(n: int, slots: int) -> tuple[float, float]:
    """(``queue add`` seconds, ``dispatch`` seconds) on a ``local`` host with ``slots`` slots."""
    with tempfile.TemporaryDirectory(prefix="labtasker-bench-local-") as name:
        work = Path(name)
        db = work / "q.duckdb"
        toml = work / "hosts.toml"
        toml.write_text(f"[hosts.local]\ngpus = 0\nslots = {slots}\n")
        return add_and_dispatch(db, n, toml, cwd=work)


def run(cfg: Config) -> Section:
    """Submit and run ``n`` tasks with each; ratios per run pair."""
    n = cfg.pick(1000, 200)
    runs = cfg.pick(3, 2)
    bin_dir = venv()
    t_sub, t_run, o_sub, o_run, o8_run = [], [], [], [], []
    for _ in range(runs):
        s, r = theirs(bin_dir, n)
        t_sub.append(s)
        t_run.append(r)
        s, r = ours(n, 1)
        o_sub.append(s)
        o_run.append(r)
        o8_run.append(ours(n, 8)[1])
    ts, tr, os_, or_ = (Stats.of(x) for x in (t_sub, t_run, o_sub, o_run))
    o8 = Stats.of(o8_run)
    section = Section(
        f"Labtasker {VERSION} (local server mode)",
        "python3 bench/run.py --only labtasker_baseline",
        f"{n} tasks running `true` with one argument. Labtasker {VERSION} (PyPI, own venv,"
        " managed-local daemon started before the timers): submit = `labtasker.api.submit_task`"
        f" called {n} times in one Python process (its CLI submits one task per process); run ="
        " `labtasker loop --idle-timeout 0.2 -- true %{i}` (one worker, one task at a time; the"
        " idle timeout is subtracted). labtasker-ssh: submit = one `queue add --grid i=0..N`"
        " process (start-up included); run = `dispatch` on a `local` host with `slots = 1`"
        f" (same parallelism), and with `slots = 8` for reference. {runs} interleaved runs.",
    )
    section.rows += [
        Row(f"Labtasker {VERSION} submit", ts, "s"),
        Row(
            "labtasker-ssh `queue add`",
            os_,
            "s",
            vs=ratio(os_.median, ts.median, higher_is_better=False),
            target=f"faster than {VERSION}",
            met=os_.median < ts.median,
        ),
        Row(f"Labtasker {VERSION} `loop` run", tr, "s", vs=f"{n / tr.median:.0f} tasks/s"),
        Row(
            "labtasker-ssh `dispatch`, local, 1 slot",
            or_,
            "s",
            vs=f"{ratio(or_.median, tr.median, higher_is_better=False)};"
            f" {n / or_.median:.0f} tasks/s",
            target=f"faster than {VERSION}",
            met=or_.median < tr.median,
        ),
        Row(
            "labtasker-ssh `dispatch`, local, 8 slots",
            o8,
            "s",
            vs=f"{ratio(o8.median, tr.median, higher_is_better=False)};"
            f" {n / o8.median:.0f} tasks/s",
        ),
    ]
    return section
