"""The dispatch loop's logic on a simulated lab (tests/loop_lab.py): several local hosts, each with
its own state dir and slots, the real helper and a real queue file. Placement, retries, suspension,
reconcile after a controller restart, dependencies and throttles, judged from the tasks' own
journal. The sshd tests (tests/integration/test_faults_*.py) keep what needs a network."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dispatcher.store.queue import Store
from dispatcher.store.suspensions import suspended_hosts
from tests.loop_lab import DEADLINE, LocalLab, alive, assert_ran_once, until

MakeLab = Callable[..., LocalLab]


@pytest.fixture
async def make_lab(tmp_path: Path) -> AsyncIterator[MakeLab]:
    """``make_lab({"a": 2, "b": 1}, **defaults)``: a lab of those hosts and slots; whatever a
    failed test leaves running is killed at teardown."""
    labs: list[LocalLab] = []

    def make(hosts: dict[str, int], **settings: object) -> LocalLab:
        lab = LocalLab(tmp_path / f"lab{len(labs)}", hosts, dict(settings))
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        await lab.close()


async def test_placement_fills_each_hosts_slots_highest_priority_first(make_lab: MakeLab) -> None:
    lab = make_lab({"a": 2, "b": 1, "c": 1})  # 4 slots
    go_high, go_mid = lab.root / "go-high", lab.root / "go-mid"
    # Added lowest priority first, so priority and id order disagree.
    low = lab.add(4, sleep=0.05)
    mid = lab.add(4, gate=go_mid, options=("--priority", "5"))
    high = lab.add(4, gate=go_high, options=("--priority", "10"))
    running = lab.start()
    # The gated tasks hold every slot: exactly the four of highest priority start, and each host
    # runs as many as it has slots.
    await until(lambda: len(lab.starts()) >= 4, "four tasks started", running)
    first = lab.starts()[:4]
    assert {e.task for e in first} == set(high), first
    assert sorted(e.host for e in first) == ["a", "a", "b", "c"], first
    go_high.touch()
    await until(lambda: len(lab.starts()) >= 8, "the next four started", running)
    assert {e.task for e in lab.starts()[4:8]} == set(mid), lab.starts()
    go_mid.touch()
    code = await running
    assert code == 0
    assert_ran_once(lab, low + mid + high)
    assert lab.most_at_once() == {"a": 2, "b": 1, "c": 1, "*": 4}
    assert lab.running_pids() == []


async def test_max_attempts_retries_and_ends_with_the_tasks_exit_codes(make_lab: MakeLab) -> None:
    lab = make_lab({"a": 1, "b": 2})
    (exits_3,) = lab.add(1, exit_code=3)
    (third,) = lab.add(1, exit_code=5, succeed_from=3, options=("--max-attempts", "3"))
    (never,) = lab.add(1, exit_code=4, options=("--max-attempts", "2"))
    fine = lab.add(3)
    code, _ = await lab.dispatch()
    assert code == 1  # some task failed
    tasks = lab.tasks()
    counts = lab.start_counts()
    assert (tasks[exits_3].state, tasks[exits_3].exit_code, tasks[exits_3].attempt) == (
        "failed", 3, 1,
    )  # fmt: skip
    assert tasks[exits_3].reason == "exit 3"
    # Fails twice, succeeds on its third try; every attempt is on record, in order.
    assert (tasks[third].state, tasks[third].exit_code, tasks[third].attempt) == (
        "succeeded", 0, 3,
    )  # fmt: skip
    history = [(a.attempt, str(a.outcome), a.exit_code) for a in lab.attempts(third)]
    assert history == [(1, "failed", 5), (2, "failed", 5), (3, "succeeded", 0)]
    assert (tasks[never].state, tasks[never].exit_code, tasks[never].attempt) == ("failed", 4, 2)
    assert [counts[i] for i in (exits_3, third, never)] == [1, 3, 2]
    # The tasks saw the attempt numbers the queue recorded.
    assert [e.attempt for e in lab.starts() if e.task == third] == [1, 2, 3]
    assert_ran_once(lab, fine)
    assert lab.most_at_once()["a"] <= 1 and lab.most_at_once()["b"] <= 2
    assert lab.running_pids() == []


async def test_dispatch_names_the_attempt_of_each_failure_of_a_retried_task(
    make_lab: MakeLab,
) -> None:
    lab = make_lab({"a": 1})
    (retried,) = lab.add(1, exit_code=3, options=("--max-attempts", "2"))
    (once,) = lab.add(1, exit_code=4)
    out, _ = lab.dispatch_cli().communicate(timeout=DEADLINE)
    lines = [line for line in out.splitlines() if line.startswith("task ")]
    assert f"task {retried} failed on a, attempt 1/2 (exit 3)" in lines, out
    assert f"task {retried} failed on a, attempt 2/2 (exit 3)" in lines, out
    assert f"task {once} failed on a (exit 4)" in lines, out  # a single try: no attempt count


async def test_a_host_whose_every_task_fails_is_suspended_while_the_others_drain_the_queue(
    make_lab: MakeLab,
) -> None:
    lab = make_lab({"good": 2, "bad": 1}, suspend_after_failures=2)
    lab.write_hosts(per_host={"bad": {"setup": "exit 7"}})  # say, a missing venv
    ids = lab.add(8, sleep=0.1, options=("--max-attempts", "5"))
    code, lines = await lab.dispatch()
    assert code == 0, lines
    done = assert_ran_once(lab, ids)  # retried on good; bad's runs never reached the task
    assert {t.host for t in done.values()} == {"good"}
    failed = [a for i in ids for a in lab.attempts(i) if str(a.outcome) == "failed"]
    assert [(a.host, a.exit_code) for a in failed] == [("bad", 7)] * 2, failed
    assert any(x.startswith("bad: suspended after 2 failures in a row") for x in lines), lines
    with Store(lab.db).transaction() as tx:  # on record for every other process
        assert list(suspended_hosts(tx)) == ["bad"]
    assert {e.host for e in lab.journal()} == {"good"}


async def test_a_restarted_controller_adopts_its_tasks_and_starts_none_twice(
    make_lab: MakeLab,
) -> None:
    lab = make_lab({"a": 2, "b": 1})  # 3 slots
    go_early, go_late = lab.root / "go-early", lab.root / "go-late"
    early = lab.add(2, gate=go_early, options=("--priority", "10"))
    (late,) = lab.add(1, gate=go_late, options=("--priority", "10"))
    rest = lab.add(4, sleep=0.05)
    proc = lab.dispatch_cli()
    await until(lambda: len(lab.starts()) >= 3, "the first three tasks started")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL
    before = lab.tasks()
    in_flight = {i for i, t in before.items() if t.state in ("launching", "running")}
    assert in_flight == {*early, late}, before
    # Without a controller the tasks run on; two of them end before it comes back.
    assert all(alive(e.pid) for e in lab.starts())
    go_early.touch()
    await until(lambda: sum(e.event == "end" for e in lab.journal()) >= 2, "two tasks ended")
    dispatcher = lab.dispatcher()
    running = lab.start(dispatcher)
    await until(
        lambda: all(h.reconciled for h in dispatcher.hosts.values()) and dispatcher.hosts,
        "every host reconciled",
        running,
    )
    go_late.touch()  # the last one ends while the new controller follows it
    assert await running == 0
    done = assert_ran_once(lab, [*early, late, *rest])
    for i in in_flight:  # adopted or collected, never launched again: same run, attempt 1
        assert (done[i].run_id, done[i].attempt) == (before[i].run_id, 1), (done[i], before[i])
    assert lab.most_at_once() == {"a": 2, "b": 1, "*": 3}
    assert lab.running_pids() == []


async def test_after_waits_for_success_and_a_failed_dependency_cancels_its_waiter(
    make_lab: MakeLab,
) -> None:
    lab = make_lab({"a": 2, "b": 2})
    (first,) = lab.add(1, sleep=0.2)
    (second,) = lab.add(1, options=("--after", str(first)))
    (broken,) = lab.add(1, exit_code=2)
    (blocked,) = lab.add(1, options=("--after", str(broken)))
    code, _ = await lab.dispatch()
    assert code == 1  # one failed; the one waiting for it can never start
    journal = [(e.event, e.task) for e in lab.journal()]
    assert journal.index(("start", second)) > journal.index(("end", first)), journal
    assert_ran_once(lab, [first, second])
    tasks = lab.tasks()
    assert tasks[broken].state == "failed" and tasks[blocked].state == "cancelled"
    assert tasks[blocked].reason == f"dependency {broken} failed"
    assert lab.start_counts()[blocked] == 0


async def test_max_running_holds_a_sweep_to_its_limit_while_slots_are_free(
    make_lab: MakeLab,
) -> None:
    lab = make_lab({"a": 3, "b": 3})
    go = lab.root / "go"
    throttled = lab.add(6, gate=go, options=("--max-running", "2", "--name", "sweep"))
    others = lab.add(3, sleep=0.05)
    running = lab.start()
    # Two of the sweep hold their slots; the free ones go to other work, not to the sweep.
    await until(lambda: len(lab.starts()) >= 5, "five tasks started", running)
    counts = lab.start_counts()
    assert sum(counts[i] for i in throttled) == 2 and counts.keys() >= set(others), lab.starts()
    go.touch()
    code = await running
    assert code == 0
    assert_ran_once(lab, throttled + others)
    assert lab.most_at_once(set(throttled))["*"] == 2
    assert lab.running_pids() == []
