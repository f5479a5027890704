"""Dependents submitted ahead to a SLURM cluster, the controller's side: where a waiting task may
go (core.deps.gates), the sbatch options and launch spec it gets (core.slurm, dispatch.cluster),
which of them go this round (core.ahead), and a withdrawn run's way back to pending (core.outcome
and the store's one move path, on a real DuckDB file; store.depends.waiting_on)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config.hosts import make_host
from dispatcher.core.ahead import place_ahead
from dispatcher.core.deps import DepKind, Gate, gates
from dispatcher.core.models import NewTask, Task, TaskState
from dispatcher.core.outcome import real_attempts, withdrawn_outcome
from dispatcher.core.scheduler import Candidate, Placement
from dispatcher.core.slurm import ClusterOffer, sbatch_options
from dispatcher.dispatch.cluster import slurm_launch
from dispatcher.store.depends import waiting_on
from dispatcher.store.queue import Store

S = TaskState
K = DepKind
GIB = 1024**3
CLUSTERS = frozenset({"c1", "c2"})


def live(task_id: int, host: str = "c1", job: str | None = "12_0", **kw: Any) -> Task:
    base: dict[str, Any] = {"attempt": 1, "max_attempts": 1, "run_id": f"t{task_id}-a1-x"}
    return Task(task_id, S.RUNNING, {}, "t", "t", host=host, job_id=job, **{**base, **kw})


# -- gates: where a waiting task may be submitted ahead -------------------------------------------


def test_a_task_whose_dependencies_run_on_one_cluster_may_go_there_ahead() -> None:
    runs = {1: live(1, job="12_0"), 2: live(2, job="13_1")}
    got = gates([(K.AFTER, 1), (K.AFTER_ANY, 2)], {1: S.RUNNING, 2: S.RUNNING}, runs, CLUSTERS)
    assert got == ("c1", [Gate(K.AFTER, 1, "t1-a1-x", "12_0", True),
                          Gate(K.AFTER_ANY, 2, "t2-a1-x", "13_1", True)])  # fmt: skip


@pytest.mark.parametrize(
    ("deps", "states", "runs"),
    [
        pytest.param([(K.AFTER, 1)], {1: S.PENDING}, {}, id="dependency pending"),
        pytest.param(
            [(K.AFTER, 1)],
            {1: S.LAUNCHING},
            {1: live(1).replace(state=S.LAUNCHING)},
            id="dependency still launching",
        ),
        pytest.param(
            [(K.AFTER, 1)], {1: S.RUNNING}, {1: live(1, host="box")}, id="running on an SSH host"
        ),
        pytest.param([(K.AFTER, 1)], {1: S.RUNNING}, {1: live(1, job=None)}, id="no job id"),
        pytest.param([(K.AFTER, 1)], {1: S.RUNNING}, {1: live(1, run_id=None)}, id="no run id"),
        pytest.param([(K.AFTER, 1)], {1: S.RUNNING}, {}, id="not among the live runs"),
        pytest.param(
            [(K.AFTER, 1), (K.AFTER, 2)],
            {1: S.RUNNING, 2: S.RUNNING},
            {1: live(1, host="c1"), 2: live(2, host="c2")},
            id="two clusters",
        ),
        pytest.param(
            [(K.AFTER, 1), (K.AFTER, 2)],
            {1: S.FAILED, 2: S.RUNNING},
            {2: live(2)},
            id="after a failed task: never met",
        ),
        pytest.param(
            [(K.AFTER_FAILED, 1), (K.AFTER, 2)],
            {1: S.SUCCEEDED, 2: S.RUNNING},
            {2: live(2)},
            id="after-failed a succeeded task",
        ),
        pytest.param([(K.AFTER, 1)], {}, {}, id="dependency removed"),
        pytest.param([(K.AFTER, 1)], {1: S.SUCCEEDED}, {}, id="every dependency met: not ahead"),
    ],
)
def test_no_cluster_to_go_ahead_to(
    deps: list[tuple[DepKind, int]], states: dict[int, TaskState], runs: dict[int, Task]
) -> None:
    assert gates(deps, states, runs, CLUSTERS) is None


def test_only_the_dependencies_not_met_yet_are_gates() -> None:
    deps = [(K.AFTER, 1), (K.AFTER_ANY, 2), (K.AFTER_FAILED, 3), (K.AFTER_FAILED, 4)]
    states = {1: S.SUCCEEDED, 2: S.FAILED, 3: S.CANCELLED, 4: S.RUNNING}
    got = gates(deps, states, {4: live(4, host="c2", job="99")}, CLUSTERS)
    assert got == ("c2", [Gate(K.AFTER_FAILED, 4, "t4-a1-x", "99", True)])


@pytest.mark.parametrize(
    ("attempt", "losses", "max_attempts", "last"),
    [(2, 0, 2, True), (2, 1, 2, False), (1, 0, 3, False), (3, 0, 3, True), (4, 2, 3, False)],
)
def test_a_gate_is_last_when_its_run_is_the_tasks_last_attempt(
    attempt: int, losses: int, max_attempts: int, last: bool
) -> None:
    run = live(1, attempt=attempt, losses=losses, max_attempts=max_attempts)
    got = gates([(K.AFTER, 1)], {1: S.RUNNING}, {1: run}, CLUSTERS)
    assert got is not None and got[1][0].last is last


# -- the sbatch options and launch spec of a task submitted ahead ---------------------------------


def test_each_dependency_kind_has_slurms_type_of_the_same_meaning() -> None:
    assert {k: k.slurm for k in DepKind} == {
        K.AFTER: "afterok",
        K.AFTER_ANY: "afterany",
        K.AFTER_FAILED: "afternotok",
    }


OPTIONS = functools.partial(
    sbatch_options, partition="gpu", account=None, qos=None, constraint=None, gres="gpu:a100",
    sbatch_args=(), default_time=3600.0, gpus=1, timeout=None,
)  # fmt: skip


def test_sbatch_options_hold_the_job_back_on_every_dependency() -> None:
    assert OPTIONS() == ["--partition=gpu", "--time=60", "--gres=gpu:a100:1"]
    assert OPTIONS(after=[("afterok", "12_0"), ("afterany", "13_1")]) == [
        "--partition=gpu",
        "--dependency=afterok:12_0,afterany:13_1",
        "--time=60",
        "--gres=gpu:a100:1",
    ]


SPEC = make_host("c1", {"kind": "slurm", "workdir": "/s", "partition": "gpu", "gres": "gpu:a100",
                        "time": "1h"})  # fmt: skip
TASK = Task(7, S.LAUNCHING, {}, "t", "t", gpus=1, host="c1", run_id="t7-a1-x")


def test_the_launch_spec_carries_the_gates_and_the_same_dependency_option() -> None:
    gated = [Gate(K.AFTER_FAILED, 1, "t1-a2-x", "12_0", False),
             Gate(K.AFTER_ANY, 2, "t2-a1-y", "13_1", True)]  # fmt: skip
    spec = slurm_launch(SPEC, TASK, gated)
    assert spec is not None
    assert spec["gate"] == [
        {"kind": "after_failed", "task": 1, "run": "t1-a2-x", "last": False},
        {"kind": "after_any", "task": 2, "run": "t2-a1-y", "last": True},
    ]
    assert "--dependency=afternotok:12_0,afterany:13_1" in spec["sbatch"]
    assert spec["sbatch"] == OPTIONS(after=[("afternotok", "12_0"), ("afterany", "13_1")])
    plain = slurm_launch(SPEC, TASK)
    assert plain is not None and plain["gate"] == []
    assert not any(o.startswith("--dependency") for o in plain["sbatch"])


def test_equal_gates_share_an_array_and_different_ones_do_not() -> None:
    # Equal sbatch option lists share one job array (core.slurm).
    a = Gate(K.AFTER, 1, "t1-a1-x", "12_0", True)
    b = Gate(K.AFTER, 1, "t1-a1-x", "12_0", False)  # last differs: SLURM's side is the same
    other = Gate(K.AFTER, 2, "t2-a1-x", "12_1", True)
    options = [(slurm_launch(SPEC, TASK, g) or {}).get("sbatch") for g in ([a], [b], [other])]
    assert options[0] == options[1] != options[2]
    assert options[0] != (slurm_launch(SPEC, TASK) or {}).get("sbatch")


# -- place_ahead: which of them go this round ----------------------------------------------------

OFFERS = {"c1": ClusterOffer("gpu:a100", "a100"), "c2": ClusterOffer("gpu:a100", "a100")}


def ids(placed: list[Placement]) -> list[tuple[int, str]]:
    return [(p.task_id, p.host) for p in placed]


def test_each_cluster_takes_only_the_jobs_it_has_left_by_priority_then_id() -> None:
    ahead = [(Candidate(5, 0, 1), "c1"), (Candidate(3, 0, 1), "c1"), (Candidate(9, 2, 1), "c1"),
             (Candidate(4, 0, 1), "c2"), (Candidate(6, 0, 1), "c2")]  # fmt: skip
    free = {"c1": 2, "c2": 1}
    placed = place_ahead(ahead, OFFERS, free, {})
    assert ids(placed) == [(9, "c1"), (3, "c1"), (4, "c2")]
    assert all(p.gpu_ids == () for p in placed)
    assert free == {"c1": 0, "c2": 0}


def test_max_running_counts_the_sweeps_active_tasks_and_grows() -> None:
    ahead = [(Candidate(i, 0, 1, group="s", max_running=3), "c1") for i in (1, 2, 3)]
    ahead.append((Candidate(4, 0, 1, group="other", max_running=3), "c1"))
    running = {"s": 2}
    placed = place_ahead(ahead, OFFERS, {"c1": 10}, running)
    assert ids(placed) == [(1, "c1"), (4, "c1")]
    assert running == {"s": 3, "other": 1}


def test_a_need_the_cluster_refuses_and_a_cluster_without_an_offer_are_skipped() -> None:
    ahead = [
        (Candidate(1, 9, 1, gpu_memory=10 * GIB), "c1"),  # memory needs: SSH hosts only
        (Candidate(2, 9, 1, min_gpu_memory=40 * GIB), "c1"),
        (Candidate(3, 9, 1, gpu_type="H100"), "c1"),  # the gres is a100
        (Candidate(4, 9, 1), "gone"),  # no offer: not a usable cluster now
        (Candidate(5, 0, 1, gpu_type="A100"), "c1"),
    ]
    free = {"c1": 5, "gone": 5}
    assert ids(place_ahead(ahead, OFFERS, free, {})) == [(5, "c1")]
    assert free == {"c1": 4, "gone": 5}
    assert place_ahead([(Candidate(6, 0, 1), "c2")], OFFERS, {"c1": 1}, {}) == []


# -- withdrawn: back to pending, nothing counted --------------------------------------------------


def test_a_withdrawn_run_goes_back_to_pending_without_an_attempt() -> None:
    task = live(3, attempt=2, losses=1, max_attempts=3)
    out = withdrawn_outcome(task, "c1: run t1-a1-x of task 1 failed and will be retried")
    assert out.state is S.PENDING and not out.counts_as_failure
    assert out.fields == {
        "attempt": 1,
        "reason": "withdrawn from c1: run t1-a1-x of task 1 failed and will be retried",
    }
    assert out.requeue_reason is None and out.fail_after_loss is None
    assert withdrawn_outcome(live(3, attempt=0), "x").fields["attempt"] == 0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "q.duckdb", lock_timeout=30)


def test_the_store_moves_a_withdrawn_running_task_back_keeping_its_real_attempts(
    store: Store,
) -> None:
    # Before, running -> pending was refused (IllegalTransitionError).
    (tid,) = store.add([NewTask({}, "t", "true", max_attempts=2)]).ids
    with store.transaction() as tx:
        tx.move(tid, S.LAUNCHING, host="c1", run_id="r1", gpu_ids=[])
        tx.move(tid, S.LOST, run_id="r1", losses=1)  # an earlier attempt, lost: not counted
        tx.move(tid, S.PENDING)
        tx.move(tid, S.LAUNCHING, host="c1", run_id="r2", gpu_ids=[])
        running = tx.move(tid, S.RUNNING, run_id="r2", job_id="12_0")
    assert running is not None and (running.attempt, running.losses) == (2, 1)
    before = real_attempts(running)
    out = withdrawn_outcome(running, "task 1 failed")
    with store.transaction() as tx:
        tx.move(tid, out.state, run_id="r2", **out.fields)
        attempts = tx.attempts(tid)
    task = store.get(tid)
    assert task.state is S.PENDING and task.reason == "withdrawn from c1: task 1 failed"
    assert (task.attempt, task.losses) == (1, 1) and real_attempts(task) == before - 1 == 0
    assert (task.host, task.run_id, task.job_id) == (None, None, None)
    assert [(a.run_id, a.outcome) for a in attempts] == [("r1", S.LOST), ("r2", S.PENDING)]
    # Its next launch is attempt 2 again: the withdrawn run cost it nothing.
    with store.transaction() as tx:
        again = tx.move(tid, S.LAUNCHING, host="c1", run_id="r3", gpu_ids=[])
    assert again is not None and again.attempt == 2 and real_attempts(again) == 1


def test_waiting_on_finds_the_pending_dependents_of_given_tasks(store: Store) -> None:
    a, b, c = store.add([NewTask({"i": i}, "t", f"run {i}") for i in range(3)]).ids
    deps = [
        NewTask({"d": 1}, "t", "d1", after=(a,)),
        NewTask({"d": 2}, "t", "d2", after_any=(b,), priority=5),
        NewTask({"d": 3}, "t", "d3", after_failed=(c,)),  # not on a or b
        NewTask({"d": 4}, "t", "d4", after=(a,), after_failed=(c,), priority=5),
        NewTask({"d": 5}, "t", "d5"),
    ]
    d1, d2, d3, d4, d5 = store.add(deps).ids
    with store.transaction() as tx:
        tx.move(a, S.LAUNCHING, host="c1", run_id="ra", gpu_ids=[])
        tx.move(a, S.RUNNING, run_id="ra")
        tx.move(c, S.CANCELLED)
        tasks, states = waiting_on(tx, [a, b, a], 10)
        assert [t.id for t in tasks] == [d2, d4, d1]  # priority first, then id
        assert states == {a: S.RUNNING, b: S.PENDING, c: S.CANCELLED}
        assert [t.id for t in waiting_on(tx, [a, b], 2)[0]] == [d2, d4]
        assert waiting_on(tx, [a], 0)[0] == []
        assert waiting_on(tx, [d5, 999], 10) == ([], {})
    assert d3 not in [t.id for t in tasks]
