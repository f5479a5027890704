"""CLI start-up (benchmark 5): ``labtasker --help`` and ``status`` on an empty queue.

Runs the installed console script when there is one (else ``python -m dispatcher``), and checks
with ``python -X importtime`` that commands which never touch SSH do not import asyncssh, and
which of the slow optional imports (duckdb, pydantic through typer, rich's markdown) each pays.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Config, Row, Section, Stats, cli_env

COMMANDS = (
    (["--help"], 0.3),
    (["status"], None),
    (["queue", "ls"], None),
)


def entry(db: Path) -> list[str]:
    script = Path(sys.executable).with_name("labtasker")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "dispatcher"]
    return [*head, "--db", str(db)]


def imports(db: Path, args: list[str]) -> set[str]:
    """Top-level modules imported by one command (``-X importtime``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "dispatcher", "--db", str(db), *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def run(cfg: Config) -> Section:
    """Wall time of each command; whether asyncssh (and duckdb) got imported."""
    runs = cfg.pick(10, 5)
    rows = []
    with tempfile.TemporaryDirectory(prefix="labtasker-bench-startup-") as name:
        db = Path(name) / "empty.duckdb"
        subprocess.run([*entry(db), "status"], env=cli_env(), capture_output=True, check=True)
        for args, target in COMMANDS:
            times = []
            for _ in range(runs + 1):  # the first run fills the page cache; not counted
                start = time.perf_counter()
                subprocess.run([*entry(db), *args], env=cli_env(), capture_output=True, check=True)
                times.append(time.perf_counter() - start)
            s = Stats.of(times[1:])
            mods = imports(db, args)
            ssh = "asyncssh" in mods
            heavy = {"duckdb": {"duckdb", "_duckdb"}, "pydantic": {"pydantic"}}
            heavy["markdown"] = {"markdown_it", "pygments"}
            note = f"imports asyncssh: {'yes' if ssh else 'no'}"
            note += "".join(f", {k}: {'yes' if v & mods else 'no'}" for k, v in heavy.items())
            tgt = "no asyncssh" + (f", < {target * 1000:.0f} ms" if target else "")
            met = not ssh and (target is None or s.median < target)
            rows.append(Row(f"`labtasker {' '.join(args)}`", s, "s", vs=note, target=tgt, met=met))
        bare = Stats.of([_timed([sys.executable, "-c", "pass"]) for _ in range(runs)])
        rows.append(Row("`python -c pass` (interpreter alone, reference)", bare, "s"))
    return Section(
        "CLI start-up",
        "python3 bench/run.py --only startup",
        f"Wall time of the `labtasker` console script ({runs} runs after one warm-up), empty"
        " queue file. Imports checked with `python -X importtime -m dispatcher ...`.",
        rows,
    )


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start
