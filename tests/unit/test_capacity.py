"""capacity.py: a host's spec + nvidia-smi inventory + our active tasks -> the scheduler's view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.config.hosts import make_host
from dispatcher.core.models import Task, TaskState
from dispatcher.core.scheduler import HostCapacity
from dispatcher.dispatch.capacity import foreign_use, gpu_problem, host_capacity


def gpu(index: int, used: int = 0) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-{index}", "memory_used_mib": used}


def inventory(*gpus: dict[str, Any], procs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"gpus": list(gpus), "processes": procs or [], "error": None}


def task(task_id: int, gpu_ids: list[int] | None) -> Task:
    return Task(task_id, TaskState.RUNNING, {}, "t", "t", host="h", gpu_ids=gpu_ids)


def cap(
    settings: dict[str, Any],
    inv: dict[str, Any] | None,
    active: Sequence[Task] = (),
    **kw: Any,
) -> HostCapacity:
    spec = make_host("h", settings)
    return host_capacity(
        spec, order=0, usable=True, unusable_reason=None, inventory=inv, active=active, **kw
    )


def test_a_gpu_held_by_a_task_is_not_free_and_a_busy_one_names_its_owner() -> None:
    procs = [{"gpu_uuid": "GPU-2", "pid": 4242, "user": "bob"}]
    c = cap({}, inventory(gpu(0), gpu(1), gpu(2, used=12 * 1024), procs=procs), [task(7, [1])])
    assert [(g.index, g.held_by_task, g.foreign) for g in c.gpus] == [
        (0, None, None),
        (1, 7, None),
        (2, None, "12.0 GiB used by bob (pid 4242)"),
    ]
    assert c.usable and c.gpus_known and c.slots_total == 0


def test_memory_under_the_threshold_is_not_someone_elses_job() -> None:
    c = cap({"max_gpu_memory_used": "2GiB"}, inventory(gpu(0, used=1500), gpu(1, used=2100)))
    assert [g.foreign for g in c.gpus] == [None, "2.1 GiB used by another process"]


def test_a_just_released_gpu_is_not_held_against_by_its_stale_memory_reading() -> None:
    c = cap({}, inventory(gpu(0, used=30000)), recently_released=[0])
    assert c.gpus[0].foreign is None


def test_cpu_host_counts_slots_used_by_tasks_without_gpus() -> None:
    c = cap({"gpus": 0, "slots": 2}, None, [task(1, []), task(2, None)])
    assert (c.gpus, c.slots_total, c.slots_used, c.gpus_known) == ((), 2, 2, True)


def test_auto_without_nvidia_smi_is_cpu_only_unless_gpus_were_asked_for() -> None:
    missing = {"gpus": [], "processes": [], "error": "nvidia-smi: command not found"}
    c = cap({}, missing)
    assert c.usable and c.gpus == () and c.slots_total == 1
    asked = cap({"gpus": "auto"}, missing)
    assert not asked.usable and 'gpus = "auto" but nvidia-smi' in str(asked.unusable_reason)


def test_pinned_gpus_only_and_a_missing_index_is_reported() -> None:
    c = cap({"gpus": [1]}, inventory(gpu(0), gpu(1)))
    assert [g.index for g in c.gpus] == [1]
    spec = make_host("h", {"gpus": [3]})
    assert gpu_problem(spec, inventory(gpu(0), gpu(1))) == (
        "GPU index 3 does not exist (nvidia-smi lists: 0, 1)"
    )


def test_auto_before_the_first_query_is_unknown() -> None:
    c = cap({}, None)
    assert not c.gpus_known and c.gpus == ()


@given(
    used=st.lists(st.integers(0, 80_000), min_size=1, max_size=8),
    held=st.sets(st.integers(0, 7)),
)
def test_a_gpu_is_offered_only_when_nobody_holds_or_uses_it(
    used: list[int], held: set[int]
) -> None:
    gpus = [gpu(i, u) for i, u in enumerate(used)]
    active = [task(100 + i, [i]) for i in sorted(held) if i < len(used)]
    c = cap({}, inventory(*gpus), active)
    for g, u in zip(c.gpus, used, strict=True):
        free = g.held_by_task is None and g.foreign is None
        assert free == (g.index not in held and u * 1024 * 1024 <= 1024**3)


def test_foreign_use_lists_at_most_three_owners() -> None:
    procs = [{"gpu_uuid": "GPU-0", "pid": p, "user": "u"} for p in range(5)]
    assert foreign_use(gpu(0, 5000), procs, 0) == (
        "4.9 GiB used by u (pid 0), u (pid 1), u (pid 2) +2"
    )


GIB = 2**30


def sharer(task_id: int, gpu_ids: list[int], gib: int) -> Task:
    return Task(task_id, TaskState.RUNNING, {}, "t", "t", host="h", gpu_ids=gpu_ids,
                gpu_memory=gib * GIB, run_id=f"t{task_id}-a1-x")  # fmt: skip


def card(used_mib: int, total_gib: int = 80) -> dict[str, Any]:
    return {"index": 0, "uuid": "GPU-0", "name": "NVIDIA H100", "memory_used_mib": used_mib,
            "memory_total_mib": total_gib * 1024}  # fmt: skip


def proc(pid: int, mib: int | None, run_id: str | None = None) -> dict[str, Any]:
    return {"gpu_uuid": "GPU-0", "pid": pid, "user": "me", "used_memory_mib": mib,
            "run_id": run_id}  # fmt: skip


def test_a_declaration_stays_reserved_until_the_task_shows_its_use() -> None:
    c = cap({}, inventory(card(0)), [sharer(1, [0], 10)])  # just launched: nothing used yet
    assert (c.gpus[0].sharers, c.gpus[0].room, c.gpus[0].total) == ((1,), 70 * GIB, 80 * GIB)
    assert c.gpus[0].name == "NVIDIA H100" and c.gpus[0].held_by_task is None


def test_a_task_using_more_than_it_declared_holds_what_it_uses() -> None:
    inv = inventory(card(30 * 1024), procs=[proc(5, 30 * 1024, "t1-a1-x")])
    c = cap({}, inv, [sharer(1, [0], 10)])
    assert c.gpus[0].room == 50 * GIB


def test_another_users_process_takes_room_and_blocks_exclusive_tasks() -> None:
    inv = inventory(card(25 * 1024), procs=[proc(5, 5 * 1024, "t1-a1-x"), proc(6, 20 * 1024)])
    c = cap({}, inv, [sharer(1, [0], 10)])
    assert c.gpus[0].room == (80 - 20 - 10) * GIB
    alone = cap({}, inventory(card(20 * 1024), procs=[proc(6, 20 * 1024)]))
    assert alone.gpus[0].foreign is not None and alone.gpus[0].room == 60 * GIB


def test_a_just_released_gpu_still_counts_another_users_memory_against_room() -> None:
    # Our task on GPU 0 just ended (20 GiB still in the reading); bob's job holds 30 GiB.
    procs = [proc(5, 20 * 1024, "t1-a1-x"), proc(6, 30 * 1024), proc(7, 10 * 1024, "t2-a1-x")]
    inv = inventory(card(60 * 1024), procs=procs)
    c = cap({}, inv, [sharer(2, [0], 10)], recently_released=[0])
    assert c.gpus[0].room == (80 - 30 - 10) * GIB and c.gpus[0].foreign is None
    unknown = inventory(card(60 * 1024), procs=[{**p, "used_memory_mib": None} for p in procs])
    c = cap({}, unknown, [sharer(2, [0], 10)], recently_released=[0])
    assert c.gpus[0].room == (80 - 50 - 10) * GIB  # until the next reading: 60 used, 10 ours


def test_without_per_process_memory_declarations_alone_count() -> None:
    inv = inventory(card(30 * 1024), procs=[proc(5, None, "t1-a1-x")])
    c = cap({}, inv, [sharer(1, [0], 10)])
    assert c.gpus[0].room == (80 - 20 - 10) * GIB  # 30 used, 10 of it taken to be ours


def test_host_settings_reach_the_scheduler() -> None:
    c = cap({"max_tasks_per_gpu": 3, "max_gpus": 1, "gpu_order": [1, 0]}, inventory(card(0)))
    assert (c.max_tasks_per_gpu, c.max_gpus, c.gpu_order) == (3, 1, (1, 0))


def test_hosts_check_names_our_tasks_and_says_when_declarations_alone_count() -> None:
    from dispatcher.cli.hosts import describe_gpus

    spec = make_host("h", {})
    inv = inventory(card(30 * 1024), procs=[proc(5, None, "t12-a1-x"), proc(6, None)])
    ok, text = describe_gpus(spec, inv)
    assert ok and text.startswith("0: H100 30720/81920 MiB busy by task 12 (pid 5), me (pid 6)")
    assert text.endswith(
        "nvidia-smi gives no per-process memory here: tasks sharing a GPU count as using what"
        " they declared (--gpu-memory)"
    )
    _, known = describe_gpus(spec, inventory(card(0), procs=[proc(5, 100, "t12-a1-x")]))
    assert "per-process" not in known
