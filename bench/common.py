"""Shared parts of the benchmark suite: statistics, result tables, the labtasker CLI, sshd hosts.

Every benchmark module exposes ``run(cfg: Config) -> Section``; ``bench/run.py`` calls them and
writes docs/benchmarks.md. Hosts are real OpenSSH servers on loopback, started with the test
suite's ``tests/sshd.py`` (one throw-away user per host when run as root).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
for _path in (REPO, REPO / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from tests.sshd import HostPlan, SshdHosts, poll  # noqa: E402

T = TypeVar("T")

__all__ = [
    "OUT",
    "REPO",
    "BenchHosts",
    "Config",
    "Row",
    "Section",
    "Stats",
    "add_and_dispatch",
    "cli_argv",
    "cli_env",
    "fmt_seconds",
    "poll",
    "ratio",
    "run_cli",
]


@dataclass(frozen=True)
class Config:
    """What ``bench/run.py`` asks of every benchmark."""

    quick: bool = False
    runs: int = 5  # repetitions behind each median

    def pick(self, full: T, quick: T) -> T:
        """``full`` normally, ``quick`` under --quick."""
        return quick if self.quick else full


@dataclass(frozen=True)
class Stats:
    """Median, min and max of repeated measurements."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError("no measurements")
        return cls(tuple(values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def n(self) -> int:
        return len(self.values)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (nearest rank), e.g. 0.95 for p95."""
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


@dataclass
class Row:
    """One line of a section's table: what was measured and how it compares."""

    label: str
    stats: Stats | None  # None: could not be measured (``note`` says why)
    unit: str  # "s", "ms", "tasks/s", "MB", "%", ...
    vs: str = ""  # the ratio against the alternative, measured in the same run
    target: str = ""  # e.g. "<= 0.3 s"
    met: bool | None = None  # None: no target
    note: str = ""

    def cells(self) -> list[str]:
        s = self.stats
        cells = ["n/a", "", "", "0"]
        if s is not None:
            cells = [_num(s.median, self.unit), _num(s.lo, self.unit), _num(s.hi, self.unit)]
            cells.append(str(s.n))
        verdict = "" if self.met is None else ("met" if self.met else "**missed**")
        target = f"{self.target} {verdict}".strip()
        label = self.label + (f" ({self.note})" if self.note else "")
        return [label, *cells, self.vs, target]


def _num(value: float, unit: str) -> str:
    if unit == "s":
        return fmt_seconds(value)
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f} {unit}"


def fmt_seconds(value: float) -> str:
    """Seconds with a sensible unit: 1.23 s, 45.6 ms."""
    return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.1f} ms"


def ratio(ours: float, theirs: float, *, higher_is_better: bool) -> str:
    """``"7.3x faster"`` / ``"0.8x (slower)"`` for our figure against the alternative's."""
    if ours <= 0 or theirs <= 0:
        return ""
    x = ours / theirs if higher_is_better else theirs / ours
    return f"{x:.1f}x" + ("" if x >= 1 else " (slower)")


@dataclass
class Section:
    """One benchmark's part of docs/benchmarks.md."""

    title: str
    command: str  # how to run just this benchmark
    intro: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        head = ["measurement", "median", "min", "max", "n", "vs alternative", "target"]
        lines = [f"## {self.title}", "", f"`{self.command}`", "", self.intro, ""]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += [
            "| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |" for r in self.rows
        ]
        lines += [""] + [f"- {n}" for n in self.notes] + ([""] if self.notes else [])
        return "\n".join(lines)


# -- the labtasker CLI ---------------------------------------------------------------------------


def cli_argv(db: Path, *args: str) -> list[str]:
    """``labtasker --db DB ARGS`` as the installed console script runs it."""
    return [sys.executable, "-m", "dispatcher", "--db", str(db), *args]


def cli_env(home: Path | None = None) -> dict[str, str]:
    """The environment of a labtasker process: no agent, no user settings, bytecode kept."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LABTASKER_") and k not in ("SSH_AUTH_SOCK", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(PYTHONPATH=str(REPO), LABTASKER_LOCK_TIMEOUT="60", COLUMNS="120")
    if home is not None:
        env["HOME"] = str(home)
    return env


def run_cli(
    db: Path, *args: str, home: Path | None = None, cwd: Path | None = None, timeout: float = 600
) -> float:
    """Run one labtasker command to completion; its wall time (SystemExit if it failed)."""
    start = time.perf_counter()
    done = subprocess.run(
        cli_argv(db, *args),
        env=cli_env(home),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"labtasker {shlex.join(args[:4])} failed: {done.stderr.strip()[-2000:]}")
    return took


def add_and_dispatch(
    db: Path,
    n: int,
    hosts_toml: Path,
    *,
    home: Path | None = None,
    cwd: Path | None = None,
    wrap: Sequence[str] = (),
) -> tuple[float, float]:
    """Queue ``n`` ``true`` tasks with one ``queue add``, then ``dispatch`` until it exits.

    Returns (add seconds, dispatch seconds), each the wall time of its whole CLI process;
    SystemExit unless dispatch reports all ``n`` succeeded. ``wrap`` prefixes the dispatch
    command (a profiler). The queue file is removed afterwards.
    """
    grid = f"i={','.join(map(str, range(n)))}"
    add = run_cli(db, "queue", "add", "--grid", grid, "--", "true", "%{i}", home=home, cwd=cwd)
    start = time.perf_counter()
    done = subprocess.run(
        [*wrap, *cli_argv(db, "dispatch", "--hosts", str(hosts_toml))],
        env=cli_env(home),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    took = time.perf_counter() - start
    if done.returncode != 0 or f"{n} succeeded" not in done.stdout:
        raise SystemExit(
            f"labtasker dispatch failed ({done.returncode}): {done.stdout[-800:]}"
            f"{done.stderr[-1500:]}"
        )
    for leftover in db.parent.glob(db.name + "*"):
        leftover.unlink()
    return add, took


def interrupt(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> None:
    """Ctrl-C a ``dispatch`` (its tasks keep running), then kill it if it is not gone in time."""
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- sshd hosts ----------------------------------------------------------------------------------


@dataclass
class BenchHosts:
    """``count`` sshd hosts (h1, h2, ...), a client HOME that reaches them by alias, hosts.toml."""

    hosts: SshdHosts
    home: Path  # client HOME: .ssh/config, known_hosts
    work: Path  # scratch directory of this benchmark (queue files, hosts.toml)
    slots: int

    @property
    def aliases(self) -> list[str]:
        return [h.alias for h in self.hosts]

    def hosts_toml(self, *, local: bool = False) -> Path:
        """hosts.toml with every host CPU-only with ``slots`` slots (or one ``local`` host)."""
        path = self.work / ("hosts-local.toml" if local else "hosts.toml")
        names = ["local"] if local else self.aliases
        # sync = false: these benchmarks time dispatch itself; bench/ship.py times shipping.
        text = "".join(
            f"[hosts.{n}]\ngpus = 0\nslots = {self.slots}\nsync = false\n\n" for n in names
        )
        path.write_text(text)
        return path

    def set_control_master(self, on: bool) -> None:
        """Add (or remove) OpenSSH connection sharing to the client config, as users set it up."""
        config = self.home / ".ssh" / "config"
        text = self.hosts.client_config(self.home / ".ssh" / "known_hosts")
        if on:
            sockets = Path(tempfile.mkdtemp(prefix="lt-cm-"))  # a short path: sockets max 108 B
            text = text.replace(
                "Host *\n",
                f"Host *\n    ControlMaster auto\n    ControlPath {sockets}/%C\n"
                "    ControlPersist 120\n",
            )
        config.write_text(text)

    def set_slow_shell(self, seconds: float) -> None:
        """Make every host's login shell take ``seconds`` to start (0: back to normal).

        bash sources ~/.bashrc for commands run by sshd (Debian builds it so); the sleep sits
        before the usual "not interactive: return" so it is paid by every ssh command.
        """
        for host in self.hosts:
            rc = host.home / ".bashrc"
            marker = rc.with_name(".bashrc.bench-orig")
            if not marker.exists():
                shutil.copy(rc, marker) if rc.exists() else marker.write_text("")
            original = marker.read_text()
            rc.write_text(f"sleep {seconds}\n{original}" if seconds > 0 else original)

    def ssh_time(self, alias: str) -> float:
        """Wall time of one fresh ``ssh ALIAS true`` through the client config."""
        start = time.perf_counter()
        subprocess.run(
            [*self.ssh_argv(), alias, "true"], env=cli_env(self.home), check=True, timeout=30
        )
        return time.perf_counter() - start

    def ssh_argv(self) -> list[str]:
        """The OpenSSH client with this HOME's config (ssh reads the passwd home, not $HOME)."""
        return ["ssh", "-F", str(self.home / ".ssh" / "config")]

    def helper_pids(self) -> list[int]:
        """Processes on the hosts that run labtasker's helper."""
        return [p.pid for h in self.hosts for p in h.processes() if "labtasker" in p.cmdline]


@contextlib.contextmanager
def bench_hosts(
    count: int, slots: int, name: str, *, gpus: int | None = None
) -> Iterator[BenchHosts]:
    """Start ``count`` hosts, each its own user; stopped (users and files removed) on exit.
    ``gpus``: each host's stub nvidia-smi lists that many GPUs (None: no nvidia-smi at all)."""
    plans = [HostPlan(f"h{i}", str(i), gpus) for i in range(1, count + 1)]  # users lt-XXXX-i
    hosts = SshdHosts.start(plans)
    work = Path(tempfile.mkdtemp(prefix=f"labtasker-bench-{name}-"))
    work.chmod(0o755)
    try:
        home = hosts.write_client_home(work / "home")
        yield BenchHosts(hosts, home, work, slots)
    finally:
        hosts.close()
        shutil.rmtree(work, ignore_errors=True)


def scratch(name: str) -> contextlib.AbstractContextManager[str]:
    """A temporary directory for one benchmark."""
    return tempfile.TemporaryDirectory(prefix=f"labtasker-bench-{name}-")
