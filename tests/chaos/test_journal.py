"""The soak's checker on hand-made journals: it must catch what it is there to catch (a checker
that cannot fail is a defect) and pass a clean history, crashes included; and the seeded plan."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tests.chaos import journal
from tests.chaos.journal import Crash, QueueAttempt, QueueTask
from tests.chaos.plan import KINDS, SHORT, Plan

SLOTS = {"a": 2, "b": 1}


def line(kind: str, at: float, run: str, task: int, host: str = "a", pid: int = 0) -> str:
    return f"{kind} {at:.9f} {run} {task} {pid or 100 + task} {host}"


def ran(run: str, task: int, start: float, end: float | None, host: str = "a") -> list[str]:
    """A run's lines: START, and DONE unless ``end`` is None (cut short)."""
    got = [line("START", start, run, task, host)]
    return got + ([line("DONE", end, run, task, host)] if end is not None else [])


def parse(*runs: Sequence[str]) -> journal.Journals:
    """Journals from runs, split into one text per host as the hosts write them."""
    per_host: dict[str, list[str]] = {}
    for lines in runs:
        for x in lines:
            per_host.setdefault(x.split()[-1], []).append(x)
    return journal.parse("\n".join(v) + "\n" for v in per_host.values())


def everything(
    journals: journal.Journals,
    crashes: Sequence[Crash] = (),
    tasks: dict[int, QueueTask] | None = None,
    attempts: Sequence[QueueAttempt] = (),
) -> list[str]:
    out = journal.check_journals(journals, crashes) + journal.check_slots(journals, crashes, SLOTS)
    if tasks is not None:
        out += journal.check_queue(journals, crashes, tasks, attempts, tasks)
    return out


def won(task: int, run: str, host: str = "a", at: float = 100.0) -> QueueAttempt:
    return QueueAttempt(task, run, host, "succeeded", at)


def test_a_clean_history_passes() -> None:
    journals = parse(ran("r1", 1, 1.0, 2.0), ran("r2", 2, 1.5, 3.0), ran("r3", 3, 2.0, 4.0))
    tasks = {i: QueueTask(i, "succeeded", f"r{i}", "a") for i in (1, 2, 3)}
    attempts = [won(i, f"r{i}") for i in (1, 2, 3)]
    assert everything(journals, tasks=tasks, attempts=attempts) == []


def test_a_run_id_started_twice_is_caught() -> None:
    journals = parse(ran("r1", 1, 1.0, 2.0), ran("r1", 1, 5.0, 6.0))
    found = everything(journals)
    assert any("run id r1 (task 1) executed twice" in x for x in found), found
    assert any("START 1.000000000 r1" in x and "START 5.000000000 r1" in x for x in found), found


def test_two_runs_of_one_task_overlapping_are_caught() -> None:
    journals = parse(ran("r1", 7, 1.0, 3.0, "a"), ran("r2", 7, 2.0, 4.0, "b"))
    found = everything(journals)
    assert any("task 7: runs r1 and r2 overlapped" in x for x in found), found


def test_a_host_running_more_than_its_slots_is_caught() -> None:
    journals = parse(ran("r1", 1, 1.0, 5.0), ran("r2", 2, 2.0, 5.0), ran("r3", 3, 3.0, 4.0))
    found = everything(journals)
    assert len(found) == 1 and found[0].startswith("a ran 3 tasks at once at 3.000000 (slots 2)")
    # One run ending as the next starts is not an overrun.
    assert everything(parse(ran("r1", 1, 1.0, 2.0, "b"), ran("r2", 2, 2.0, 3.0, "b"))) == []


def test_a_cut_short_run_holds_its_slot_until_the_crash() -> None:
    crash = Crash("b", 4.0, 4.1, 6.0)
    journals = parse(ran("r1", 1, 1.0, None, "b"), ran("r2", 2, 3.0, 3.5, "b"))
    assert any("b ran 2 tasks at once" in x for x in everything(journals, [crash]))
    journals = parse(ran("r1", 1, 1.0, None, "b"), ran("r2", 2, 7.0, 8.0, "b"))
    assert everything(journals, [crash]) == []


def test_a_run_without_done_and_without_a_crash_is_caught() -> None:
    found = everything(parse(ran("r1", 1, 1.0, None)))
    assert found and "never finished and no crash of a cut it" in found[0], found
    # A crash before the run started does not explain it either.
    found = everything(parse(ran("r1", 1, 5.0, None)), [Crash("a", 1.0, 1.1, 2.0)])
    assert found and "never finished" in found[0], found


def test_a_task_rerun_after_a_crash_passes_and_its_loss_is_checked() -> None:
    crash = Crash("a", 2.0, 2.1, 4.0)
    journals = parse(ran("r1", 1, 1.0, None), ran("r2", 1, 5.0, 6.0, "b"))
    tasks = {1: QueueTask(1, "succeeded", "r2", "b")}
    attempts = [QueueAttempt(1, "r1", "a", "lost", 4.5), won(1, "r2", "b")]
    assert everything(journals, [crash], tasks, attempts) == []
    # The same history without the crash: the loss is a lie and the rerun a second execution.
    found = everything(journals, [], tasks, attempts)
    assert any("declared lost on a at 4.5 but no crash cut it short" in x for x in found), found


def test_a_crash_between_done_and_the_exit_record_makes_a_rerun_legitimate() -> None:
    journals = parse(ran("r1", 1, 1.0, 2.0), ran("r2", 1, 5.0, 6.0))
    tasks = {1: QueueTask(1, "succeeded", "r2", "a")}
    attempts = [QueueAttempt(1, "r1", "a", "lost", 4.5), won(1, "r2")]
    assert everything(journals, [Crash("a", 2.05, 2.1, 4.0)], tasks, attempts) == []
    # A crash after the loss was declared explains nothing.
    found = everything(journals, [Crash("a", 4.8, 4.9, 4.95)], tasks, attempts)
    assert any("no crash cut it short" in x for x in found), found


def test_a_second_execution_the_queue_does_not_know_is_caught() -> None:
    journals = parse(ran("r1", 1, 1.0, 2.0), ran("r9", 1, 3.0, 4.0, "b"))
    tasks = {1: QueueTask(1, "succeeded", "r1", "a")}
    found = everything(journals, tasks=tasks, attempts=[won(1, "r1")])
    assert any("task 1 executed twice: run r9" in x for x in found), found


def test_the_queue_must_agree_with_the_journals() -> None:
    journals = parse(ran("r1", 1, 1.0, 2.0), ran("r2", 2, 1.0, None))
    tasks = {1: QueueTask(1, "succeeded", "r1", "b"), 2: QueueTask(2, "succeeded", "r2", "a")}
    found = everything(journals, [], tasks, [won(1, "r1", "b"), won(2, "r2")])
    assert any("task 1: the queue's run r1 on b did not finish there" in x for x in found)
    assert any("task 2 never finished on any host" in x for x in found), found
    tasks = {1: QueueTask(1, "failed", "r1", "a")}
    found = everything(parse(ran("r1", 1, 1.0, 2.0)), [], tasks, [])
    assert found == ["task 1 is not succeeded in the queue: " + repr(tasks[1])], found


def test_broken_lines_are_reported_and_progress_counts_finished_tasks(tmp_path: Path) -> None:
    (tmp_path / "a.journal").write_text(
        "\n".join([*ran("r1", 1, 1.0, 2.0), *ran("r2", 2, 1.0, None), "DONE garbage"]) + "\n"
    )
    (tmp_path / "b.journal").write_text(line("START", 3.0, "r3", 3, "b") + "\nDONE 4.0 r3")
    found = journal.read(tmp_path).problems
    assert found == [
        "unparsable journal line 'DONE garbage'",
        "unparsable journal line 'DONE 4.0 r3'",
    ], found
    progress = journal.Progress(tmp_path)
    assert progress.count() == 1  # a half-written last line is not read yet
    with (tmp_path / "b.journal").open("a") as f:
        f.write(" 3 103 b\n")
    assert progress.count() == 2 and progress.done == {1, 3}


def test_a_plan_is_its_seed_and_strikes_every_fault_kind_twice() -> None:
    slots = {"a": 2, "b": 1}
    plan = Plan.make(5, SHORT, slots)
    assert plan == Plan.make(5, SHORT, slots) != Plan.make(6, SHORT, slots)
    kinds = Counter(f.kind for f in plan.faults)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 2
    assert len(plan.faults) == SHORT.faults and len(plan.sleeps) == SHORT.tasks
    marks = [f.at_done for f in plan.faults]
    assert marks == sorted(marks) and marks[-1] < SHORT.tasks  # the last stretch is fault-free
