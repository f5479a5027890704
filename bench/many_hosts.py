"""64 SSH hosts at once: connect, controller CPU, reattach after kill -9, throughput vs 4 hosts.

64 real sshd hosts on loopback (127.0.0.2-65, one user each, started in parallel), 8 slots each.
One run measures: the time from ``dispatch`` starting to a task running on every host (and to
all 512 running); the dispatch process's CPU while 512 long tasks run; after a ``kill -9`` of
dispatch, the time until a new one has re-adopted every run (its "re-adopted" lines), with the
cost of one SSH connection (key exchange and login) measured with asyncssh; and trivial-task
throughput on the 64 hosts against 4 of them, runs interleaved.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    poll,
    run_cli,
)

from dispatcher.transport.transports import JUMP_HANDSHAKES

HOSTS, SLOTS, FEW = 64, 8, 4
#: Tasks running when dispatch is killed: the issue asks for at least 500.
LONG_TASKS = HOSTS * SLOTS
#: How long the controller's CPU is sampled while every slot runs a task.
CPU_WINDOW = 20.0
SUCCEEDED = re.compile(r"^task \d+ succeeded on ")
READOPTED = re.compile(r"^(\S+): (\d+) runs? re-adopted")


@dataclass
class Dispatch:
    """A background ``dispatch`` whose output lines are time-stamped as they arrive."""

    proc: subprocess.Popen[str]
    started: float
    lines: list[tuple[float, str]] = field(default_factory=list)

    @classmethod
    def start(cls, bh: BenchHosts, db: Path, toml: Path) -> Dispatch:
        started = time.monotonic()
        proc = subprocess.Popen(
            cli_argv(db, "dispatch", "--hosts", str(toml)),
            env={**cli_env(bh.home), "PYTHONUNBUFFERED": "1"},  # lines timed as written
            cwd=bh.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        d = cls(proc, started)
        threading.Thread(target=d._read, daemon=True).start()
        return d

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def cpu_seconds(self) -> float:
        """user + sys of the dispatch process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def adopted(self) -> int:
        """Runs its "HOST: N runs re-adopted" lines add up to so far."""
        return sum(int(m.group(2)) for _, line in self.lines if (m := READOPTED.match(line)))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def hosts_toml(bh: BenchHosts, names: list[str], name: str) -> Path:
    """CPU-only hosts with ``SLOTS`` slots; each task knows its host (EXPERIMENT_HOST)."""
    path = bh.work / name
    path.write_text(
        "".join(
            f"[hosts.{n}]\ngpus = 0\nslots = {SLOTS}\nsync = false\nconnect_timeout = 60\n"
            f'env = {{ EXPERIMENT_HOST = "{n}" }}\n\n'
            for n in names
        )
    )
    return path


def hosts_seen(marks: Path) -> set[str]:
    """Hosts that have started a task (each task touches MARKS/HOST.N)."""
    return {m.split(".")[0] for m in os.listdir(marks)}


def machine_idle() -> tuple[int, int]:
    """(idle, total) jiffies of every core so far (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)


def machine_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the machine's CPU time that was busy between two ``machine_idle`` readings."""
    total = after[1] - before[1]
    return 1 - (after[0] - before[0]) / total if total else 0.0


def wait_until(check: Callable[[], object], what: str, timeout: float = 300) -> float:
    """Monotonic time at which ``check`` first held."""
    poll(check, what, timeout)
    return time.monotonic()


def release(fifo: Path, done: Callable[[], bool]) -> None:
    """Let every task blocked on ``fifo`` finish: open it for writing and close it (EOF for
    all readers waiting in open), again until ``done``."""
    while not done():
        with contextlib.suppress(OSError):  # ENXIO: no reader right now
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        time.sleep(0.2)


def long_tasks(
    bh: BenchHosts, result: dict[str, float], series: dict[str, list[float]], cycles: int
) -> None:
    """Phases a-c: dispatch 512 long tasks, sample CPU, kill -9, restart, wait for re-adoption."""
    shared = bh.work / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    marks, fifo = shared / "marks", shared / "go"
    marks.mkdir(mode=0o777)
    marks.chmod(0o777)
    os.mkfifo(fifo, 0o666)
    fifo.chmod(0o666)
    db = bh.work / "long.duckdb"
    toml = hosts_toml(bh, bh.aliases, "hosts-64.toml")
    grid = "i=" + ",".join(map(str, range(LONG_TASKS)))
    cmd = f'touch {marks}/"$EXPERIMENT_HOST".%{{i}}; exec cat {fifo}'
    run_cli(db, "queue", "add", "--cmd", cmd, "--grid", grid, home=bh.home, cwd=bh.work)
    idle0 = machine_idle()
    first = Dispatch.start(bh, db, toml)
    try:
        every = wait_until(lambda: len(hosts_seen(marks)) == HOSTS, "a task on every host")
        result["first_every_host"] = every - first.started
        result["connect_cpu_dispatch"] = first.cpu_seconds()
        result["connect_machine_busy"] = machine_busy(idle0, machine_idle())
        full = wait_until(lambda: len(os.listdir(marks)) == LONG_TASKS, "all tasks running")
        result["all_running"] = full - first.started
        cpu0, t0 = first.cpu_seconds(), time.monotonic()
        time.sleep(CPU_WINDOW)  # a measuring window, not a wait for a condition
        result["cpu_share"] = (first.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        first.proc.kill()  # kill -9 with every slot busy
        first.proc.wait()
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    times = reattach(bh, db, toml, fifo, cycles)
    series["readopt"] = [readopt for readopt, _ in times]
    series["reconnect"] = [reconnect for _, reconnect in times]


def reattach(
    bh: BenchHosts, db: Path, toml: Path, fifo: Path, cycles: int
) -> list[tuple[float, float]]:
    """(seconds to every run re-adopted, seconds to every host connected) of ``cycles``
    restarts, each after a kill -9 with every task running; the last lets the tasks end."""
    return [_restart(bh, db, toml, fifo, last=c == cycles - 1) for c in range(cycles)]


def _restart(
    bh: BenchHosts, db: Path, toml: Path, fifo: Path, *, last: bool
) -> tuple[float, float]:
    d = Dispatch.start(bh, db, toml)
    try:
        back = wait_until(lambda: d.adopted() >= LONG_TASKS, "every run re-adopted")
        connected = max(t for t, line in d.lines if line.endswith(": connected"))
        if not last:
            d.proc.kill()  # kill -9 again: every run is still running
            d.proc.wait()
            return back - d.started, connected - d.started
        release(fifo, lambda: d.proc.poll() is not None)
        time.sleep(0.1)  # let the reader thread take the last lines (it ends at EOF)
        if f"{LONG_TASKS} succeeded" not in d.text():
            raise SystemExit(f"restarted dispatch did not finish every task:\n{d.text()}")
        return back - d.started, connected - d.started
    finally:
        if d.proc.poll() is None:
            d.proc.kill()


async def _connects(bh: BenchHosts, aliases: list[str]) -> tuple[float, float, float]:
    """(seconds per connection one after another, client CPU seconds per connection, seconds
    for all ``aliases`` at once) of a bare asyncssh connect + ``true`` through the client
    config, as dispatch connects."""
    import asyncssh

    config = [str(bh.home / ".ssh" / "config")]

    async def one(alias: str) -> None:
        async with asyncssh.connect(alias, config=config, agent_path=None) as conn:
            await conn.run("true", check=True)

    cpu, start = os.times(), time.perf_counter()
    for alias in aliases:
        await one(alias)
    each = (time.perf_counter() - start) / len(aliases)
    after = os.times()
    cpu_each = (after.user + after.system - cpu.user - cpu.system) / len(aliases)
    start = time.perf_counter()
    await asyncio.gather(*(one(a) for a in aliases))
    return each, cpu_each, time.perf_counter() - start


def throughput(bh: BenchHosts, n: int, runs: int) -> dict[str, list[float]]:
    """Tasks/s of ``n`` ``true`` tasks on 64 and on 4 hosts: end to end (``queue add`` start to
    dispatch exit, connecting included) and steady (tasks that ended after the last host
    connected, over the time from then to the last one's end)."""
    tomls = {
        HOSTS: hosts_toml(bh, bh.aliases, "hosts-tp-64.toml"),
        FEW: hosts_toml(bh, bh.aliases[:FEW], "hosts-tp-4.toml"),
    }
    rates: dict[str, list[float]] = {}
    grid = "i=" + ",".join(map(str, range(n)))
    for r in range(runs):
        for count, toml in tomls.items():
            db = bh.work / f"tp-{count}-{r}.duckdb"
            start = time.monotonic()
            run_cli(db, "queue", "add", "--grid", grid, "--", "true", "%{i}", home=bh.home)
            d = Dispatch.start(bh, db, toml)
            d.proc.wait()
            end = time.monotonic()
            time.sleep(0.1)  # let the reader thread take the last lines (it ends at EOF)
            if d.proc.returncode != 0 or f"{n} succeeded" not in d.text():
                raise SystemExit(f"dispatch failed ({d.proc.returncode}): {d.text()[-1500:]}")
            up = max(t for t, line in d.lines if line.endswith(": connected"))
            ended = [t for t, line in d.lines if SUCCEEDED.match(line) and t > up]
            rates.setdefault(f"{count} end", []).append(n / (end - start))
            if len(ended) > 1:
                rates.setdefault(f"{count} steady", []).append(len(ended) / (ended[-1] - up))
    return rates


def measure(cfg: Config) -> tuple[dict[str, float], dict[str, list[float]], int]:
    """Every figure of the section, from one set of hosts (each its own user)."""
    n, runs = cfg.pick(2000, 500), cfg.pick(3, 1)
    result: dict[str, float] = {}
    with bench_hosts(HOSTS, SLOTS, "many") as bh:
        each, cpu_each, together = asyncio.run(_connects(bh, bh.aliases))
        result.update(connect_each=each, connect_cpu=cpu_each, connect_all=together)
        series = throughput(bh, n, runs)
        long_tasks(bh, result, series, runs)
    return result, series, n


def _one(value: float) -> Stats:
    return Stats.of([value])


def run(cfg: Config) -> Section:
    """The 64-host section of docs/benchmarks.md."""
    r, rates, n = measure(cfg)
    section = Section(
        f"{HOSTS} SSH hosts",
        "python3 bench/run.py --only many_hosts",
        f"{HOSTS} real sshd hosts on loopback (127.0.0.2-{HOSTS + 1}, one user each, all"
        f" started in parallel), {SLOTS} slots each ({HOSTS * SLOTS} at once), all on this"
        f" machine with the controller. In this order: connections, throughput, long tasks"
        " (so labtasker's helper is already on every host, as after a lab's first dispatch)."
        f" Long tasks: {LONG_TASKS} of `touch MARK; exec cat FIFO`"
        " (each waits until the benchmark opens the FIFO); times from the `dispatch` process"
        " start (its ~0.5 s Python start-up included). Reattach: `kill -9` of dispatch with"
        f" {LONG_TASKS} running, a new `dispatch`, until its `HOST: N runs re-adopted` lines"
        f" add up to {LONG_TASKS}; then killed again the same way, {cfg.pick(3, 1)} restarts in"
        f" all. Connections: a bare asyncssh connect + `true` to each host"
        f" through the same ~/.ssh/config. Throughput: {n} `true` tasks on all {HOSTS} hosts and"
        f" on {FEW} of them (h1-h{FEW}), runs interleaved; end to end is `queue add` start to"
        " dispatch exit (connecting included), steady is the tasks that ended after the last"
        " host connected over the time from then to the last one's end.",
    )
    section.rows += [*_long_rows(r, rates), *_throughput_rows(rates)]
    section.notes += _notes(r, rates)
    return section


def _long_rows(r: dict[str, float], series: dict[str, list[float]]) -> list[Row]:
    readopt = Stats.of(series["readopt"])
    return [
        Row("dispatch start to a task running on every host", _one(r["first_every_host"]), "s"),
        Row(
            "dispatch's CPU until then",
            _one(r["connect_cpu_dispatch"]),
            "s",
            note=f"the machine's {os.cpu_count()} cores were"
            f" {100 * r['connect_machine_busy']:.0f} % busy meanwhile",
        ),
        Row(f"dispatch start to all {LONG_TASKS} tasks running", _one(r["all_running"]), "s"),
        Row(
            f"controller CPU while {LONG_TASKS} tasks run",
            _one(100 * r["cpu_share"]),
            "%",
            note=f"user+sys of dispatch over {CPU_WINDOW:g} s, % of one core",
        ),
        Row(
            f"restart after kill -9 to every run re-adopted ({LONG_TASKS} runs)",
            readopt,
            "s",
            target="< 10 s",
            met=readopt.median < 10,
        ),
        Row(
            "restart after kill -9 to every host connected",
            Stats.of(series["reconnect"]),
            "s",
        ),
        Row("one SSH connection + `true`, one after another", _one(r["connect_each"]), "s"),
        Row("client CPU per SSH connection (key exchange, login)", _one(r["connect_cpu"]), "s"),
        Row(f"{HOSTS} SSH connections + `true` at once", _one(r["connect_all"]), "s"),
    ]


def _throughput_rows(rates: dict[str, list[float]]) -> list[Row]:
    rows = []
    for kind in ("steady", "end"):
        label = "steady" if kind == "steady" else "end to end"
        many, few = rates.get(f"{HOSTS} {kind}"), rates.get(f"{FEW} {kind}")
        if not many or not few:
            rows.append(Row(f"throughput {label}", None, "tasks/s", note="too few tasks"))
            continue
        share = Stats.of(many).median / Stats.of(few).median
        rows += [
            Row(
                f"throughput {label}, {HOSTS} hosts",
                Stats.of(many),
                "tasks/s",
                vs=f"{share:.2f} of {FEW} hosts",
                target=f">= 80% of {FEW} hosts",
                met=share >= 0.8,
            ),
            Row(f"throughput {label}, {FEW} hosts", Stats.of(few), "tasks/s"),
        ]
    return rows


def _notes(r: dict[str, float], rates: dict[str, list[float]]) -> list[str]:
    cores = os.cpu_count() or 1
    conns = r["connect_cpu"] * HOSTS
    notes = [
        f"Connections are opened in parallel, one per host: no host's sshd sees more than one"
        f" unauthenticated connection from dispatch, far below OpenSSH's default MaxStartups"
        f" (10); through one ProxyJump host it sets up at most {JUMP_HANDSHAKES} at a time"
        " (`tests/integration/test_many_hosts.py`). The key exchange and login cost the"
        f" controller {r['connect_cpu'] * 1000:.0f} ms"
        f" of CPU per connection ({conns:.1f} s for {HOSTS}, on its one event-loop thread); one"
        f" connection takes {r['connect_each'] * 1000:.0f} ms end to end, {HOSTS} at once"
        f" {r['connect_all']:.1f} s.",
        f"On this {cores}-core machine the {HOSTS} hosts' sshd, login shells and helpers run on"
        f" the controller's cores: while dispatch connected them the machine was"
        f" {100 * r['connect_machine_busy']:.0f} % busy, and dispatch itself used"
        f" {r['connect_cpu_dispatch']:.1f} s of CPU (its start-up included) of the"
        f" {r['first_every_host']:.1f} s. Connecting and reattaching are bound by the machine's"
        " CPU, not by the controller; on real servers each host's share runs on that host.",
    ]
    notes.append(
        f"Compare the {HOSTS}-host and {FEW}-host figures within this section: they ran"
        " interleaved on the same hosts. Absolute rates depend on what else ran on this shared"
        " machine at the time (the throughput section's 4-host figure is from another run)."
    )
    readopt, reconnect = Stats.of(rates["readopt"]).median, Stats.of(rates["reconnect"]).median
    if readopt >= 10:
        notes.append(
            f"Reattach missed its 10 s goal here ({readopt:.1f} s): {reconnect:.1f} s of it is"
            f" reconnecting the {HOSTS} hosts on the shared cores (see above); the probes of all"
            f" {LONG_TASKS} runs took the {readopt - reconnect:.1f} s after that."
        )
    end = rates.get(f"{HOSTS} end"), rates.get(f"{FEW} end")
    if end[0] and end[1] and Stats.of(end[0]).median < 0.8 * Stats.of(end[1]).median:
        notes.append(
            "End to end, the 64-host runs pay for connecting 64 hosts (sshd and helper start on"
            " every host, on these same cores) before all their slots work; the steady rate,"
            " once every host is connected, is the loop's own scaling."
        )
    return notes


if __name__ == "__main__":  # QUICK=1: smaller sizes
    print(run(Config(quick=os.environ.get("QUICK") == "1")).markdown())
