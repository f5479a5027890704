"""The soak's judge: the hosts' own journals, parsed, and every check made from them.

Each task appends ``START <time> <run id> <task id> <pid> <host>`` when it starts and a ``DONE``
line of the same shape just before it exits, to a journal on its host. This module reads those
lines and the faults the soak injected (host crashes above all) and says what went wrong, as
plain sentences naming tasks, run ids and journal lines. It never reads labtasker's records
except where a check compares them with the journals (``check_queue``).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The task the soak runs: ``sh TASK_SCRIPT JOURNAL_DIR SLEEP TASK_INDEX``.
TASK_SCRIPT = """\
j="$1/$EXPERIMENT_HOST.journal"
echo "START $(date +%s.%N) $LABTASKER_RUN_ID $LABTASKER_TASK_ID $$ $EXPERIMENT_HOST" >>"$j"
sleep "$2"
echo "DONE $(date +%s.%N) $LABTASKER_RUN_ID $LABTASKER_TASK_ID $$ $EXPERIMENT_HOST" >>"$j"
"""


@dataclass(frozen=True)
class Line:
    """One journal line."""

    kind: str  # START or DONE
    at: float  # seconds since the epoch, the host's clock
    run_id: str
    task: int
    pid: int
    host: str
    text: str


@dataclass
class Run:
    """One run id as the journals saw it: its START line and, unless cut short, its DONE."""

    start: Line
    done: Line | None = None

    @property
    def run_id(self) -> str:
        return self.start.run_id

    @property
    def task(self) -> int:
        return self.start.task

    @property
    def host(self) -> str:
        return self.start.host

    def lines(self) -> str:
        """The run's journal lines, quoted for a message."""
        got = [self.start.text] + ([self.done.text] if self.done else [])
        return " / ".join(repr(x) for x in got)


@dataclass(frozen=True)
class Crash:
    """A host crash the soak injected: every process of the host's user killed between
    ``at`` and ``killed``; logins worked again from ``answered`` on."""

    host: str
    at: float
    killed: float
    answered: float


@dataclass(frozen=True)
class QueueTask:
    """What the queue says of a task at the end."""

    id: int
    state: str
    run_id: str | None
    host: str | None


@dataclass(frozen=True)
class QueueAttempt:
    """One row of the queue's attempts table; ``declared``: its finished_at, epoch seconds."""

    task: int
    run_id: str | None
    host: str | None
    outcome: str
    declared: float | None


@dataclass
class Journals:
    """Every run in the journals, by run id; lines that break the format or repeat a run id."""

    runs: dict[str, Run] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, line: Line) -> None:
        run = self.runs.get(line.run_id)
        if line.kind == "START":
            if run is not None:
                self.problems.append(
                    f"run id {line.run_id} (task {line.task}) executed twice: {run.start.text!r}"
                    f" then {line.text!r}"
                )
                return
            self.runs[line.run_id] = Run(line)
        elif run is None:
            self.problems.append(f"DONE without START for run {line.run_id}: {line.text!r}")
        elif run.done is not None:
            self.problems.append(
                f"run id {line.run_id} (task {line.task}) finished twice: {run.done.text!r}"
                f" then {line.text!r}"
            )
        elif (line.task, line.host) != (run.task, run.host):
            self.problems.append(f"DONE does not match its START: {run.lines()} / {line.text!r}")
        else:
            run.done = line

    def by_task(self) -> dict[int, list[Run]]:
        """Runs per task id, in start order."""
        out: dict[int, list[Run]] = defaultdict(list)
        for run in sorted(self.runs.values(), key=lambda r: r.start.at):
            out[run.task].append(run)
        return out


def parse_line(text: str) -> Line | None:
    """One journal line, or None when it breaks the format."""
    parts = text.split()
    if len(parts) != 6 or parts[0] not in ("START", "DONE"):
        return None
    try:
        return Line(
            parts[0], float(parts[1]), parts[2], int(parts[3]), int(parts[4]), parts[5], text
        )
    except ValueError:
        return None


def parse(texts: Iterable[str]) -> Journals:
    """Read journal texts (any number of hosts' files, in any order) into runs."""
    journals = Journals()
    lines = []
    for text in texts:
        for raw in text.splitlines():
            line = parse_line(raw)
            if line is None:
                if raw.strip():
                    journals.problems.append(f"unparsable journal line {raw!r}")
                continue
            lines.append(line)
    lines.sort(key=lambda x: (x.at, x.kind != "START"))
    for line in lines:
        journals.add(line)
    return journals


def read(directory: Path) -> Journals:
    """Every ``*.journal`` file in ``directory``."""
    return parse(p.read_text() for p in sorted(directory.glob("*.journal")))


class Progress:
    """Counts tasks with a DONE line, and runs started but not done per host, reading only what
    the journals gained since last time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}
        self.done: set[int] = set()
        self.running: dict[str, set[str]] = defaultdict(set)

    def count(self) -> int:
        for path in self.directory.glob("*.journal"):
            with path.open("rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for raw in complete.decode().splitlines():
                line = parse_line(raw)
                if line is None:
                    continue
                if line.kind == "START":
                    self.running[line.host].add(line.run_id)
                else:
                    self.done.add(line.task)
                    self.running[line.host].discard(line.run_id)
        return len(self.done)


# -- the checks ----------------------------------------------------------------------------------


def crash_after(run: Run, crashes: Sequence[Crash], since: float) -> Crash | None:
    """The first crash of the run's host at or after ``since``."""
    later = [c for c in crashes if c.host == run.host and c.killed >= since]
    return min(later, key=lambda c: c.at) if later else None


def end_of(run: Run, crashes: Sequence[Crash]) -> float:
    """When the run stopped: its DONE line, else the crash that killed it, else never (inf)."""
    if run.done is not None:
        return run.done.at
    crash = crash_after(run, crashes, run.start.at)
    return crash.killed if crash else math.inf


def cut_short(run: Run, crashes: Sequence[Crash], declared: float | None) -> bool:
    """True when a crash cut the run: it has no DONE and its host crashed after its START, or
    its host crashed after its DONE and before the queue declared it lost (so before its exit
    could be recorded)."""
    if run.done is None:
        return crash_after(run, crashes, run.start.at) is not None
    crash = crash_after(run, crashes, run.done.at)
    return crash is not None and (declared is None or crash.at <= declared)


def check_journals(journals: Journals, crashes: Sequence[Crash]) -> list[str]:
    """Format problems, run ids executed twice, runs that vanished without a crash, and runs
    of one task that overlapped in time."""
    out = list(journals.problems)
    for run in journals.runs.values():
        if run.done is None and not cut_short(run, crashes, None):
            out.append(
                f"task {run.task} run {run.run_id} on {run.host} never finished and no crash of"
                f" {run.host} cut it: {run.lines()}"
            )
    for task, runs in journals.by_task().items():
        for a, b in itertools.pairwise(runs):
            if b.start.at < end_of(a, crashes):
                out.append(
                    f"task {task}: runs {a.run_id} and {b.run_id} overlapped: {a.lines()}"
                    f" and {b.lines()}"
                )
    return out


def check_slots(
    journals: Journals, crashes: Sequence[Crash], slots: Mapping[str, int]
) -> list[str]:
    """No host ran more tasks at once than its slots (runs cut short end at the crash)."""
    out = []
    per_host: dict[str, list[Run]] = defaultdict(list)
    for run in journals.runs.values():
        per_host[run.host].append(run)
    for host, runs in sorted(per_host.items()):
        limit = slots.get(host, 0)
        events = sorted(
            [(r.start.at, 1, r) for r in runs] + [(end_of(r, crashes), -1, r) for r in runs],
            key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
        )
        live: dict[str, Run] = {}
        for at, step, run in events:
            if step < 0:
                live.pop(run.run_id, None)
                continue
            live[run.run_id] = run
            if len(live) > limit:
                names = "; ".join(r.lines() for r in live.values())
                out.append(
                    f"{host} ran {len(live)} tasks at once at {at:.6f} (slots {limit}): {names}"
                )
                break  # one report per host is enough to act on
    return out


def check_queue(
    journals: Journals,
    crashes: Sequence[Crash],
    tasks: Mapping[int, QueueTask],
    attempts: Sequence[QueueAttempt],
    expected: Iterable[int],
) -> list[str]:
    """The queue's final word agrees with the journals: every task succeeded with a run the
    journal saw finish on that host; every other run of it is an attempt the queue declared
    lost and a crash really cut short; every run declared lost was cut short."""
    out = []
    runs = journals.by_task()
    tried: dict[int, list[QueueAttempt]] = defaultdict(list)
    for a in attempts:
        tried[a.task].append(a)
    for task_id in expected:
        mine = runs.get(task_id, [])
        if not any(r.done for r in mine):
            out.append(
                f"task {task_id} never finished on any host; runs: {[r.lines() for r in mine]}"
            )
        task = tasks.get(task_id)
        if task is None or task.state != "succeeded":
            out.append(f"task {task_id} is not succeeded in the queue: {task}")
            continue
        won = journals.runs.get(task.run_id or "")
        if won is None or won.done is None or won.host != task.host or won.task != task_id:
            shown = won.lines() if won else "no journal line"
            out.append(
                f"task {task_id}: the queue's run {task.run_id} on {task.host} did not finish"
                f" there by the journals ({shown})"
            )
        outcomes = [a.outcome for a in tried[task_id]]
        if outcomes.count("succeeded") != 1 or set(outcomes) - {"succeeded", "lost"}:
            out.append(f"task {task_id}: attempts {outcomes}, expected lost ones and one success")
        lost = {a.run_id: a for a in tried[task_id] if a.outcome == "lost"}
        for run in mine:
            if run.run_id == task.run_id:
                continue
            attempt = lost.get(run.run_id)
            if attempt is None:
                out.append(
                    f"task {task_id} executed twice: run {run.run_id} is not an attempt the"
                    f" queue declared lost (the task succeeded with {task.run_id}): {run.lines()}"
                )
    for a in attempts:
        if a.outcome != "lost":
            continue
        seen = journals.runs.get(a.run_id or "")
        if seen is None:
            crashed = [
                c
                for c in crashes
                if c.host == a.host and (a.declared is None or c.at <= a.declared)
            ]
            if not crashed:
                out.append(
                    f"task {a.task} run {a.run_id} declared lost on {a.host}: it never started"
                    " and no crash of that host came before"
                )
            continue
        if seen.host != a.host:
            out.append(f"task {a.task} run {a.run_id}: queue says {a.host}, journal {seen.lines()}")
        if not cut_short(seen, crashes, a.declared):
            out.append(
                f"task {a.task} run {a.run_id} declared lost on {a.host} at {a.declared} but"
                f" no crash cut it short: {seen.lines()}"
            )
    return out


def lost_delays(attempts: Sequence[QueueAttempt], crashes: Sequence[Crash]) -> list[float]:
    """Seconds from a crashed host answering again to each of its runs being declared lost."""
    out = []
    for a in attempts:
        if a.outcome != "lost" or a.declared is None:
            continue
        before = [c for c in crashes if c.host == a.host and c.at <= a.declared]
        if before:
            out.append(a.declared - max(before, key=lambda c: c.at).answered)
    return out
