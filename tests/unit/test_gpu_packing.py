"""The pure GPU packing rules (core/gpu_packing.py, scheduler rule 8): examples and properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core.scheduler import Candidate, GpuInfo, HostCapacity, plan

GIB = 2**30


def gpu(index: int, total_gib: float, **kw: object) -> GpuInfo:
    fields: dict[str, object] = {"held_by_task": None, "foreign": None, "name": "NVIDIA A100"}
    fields |= {"total": int(total_gib * GIB), "room": int(total_gib * GIB)} | kw
    return GpuInfo(index=index, **fields)  # type: ignore[arg-type]


def host(name: str, *gpus: GpuInfo, order: int = 0, **kw: object) -> HostCapacity:
    return HostCapacity(name, order, True, None, tuple(gpus), 0, 0, True, **kw)  # type: ignore[arg-type]


def mem(task_id: int, gib: float, **kw: object) -> Candidate:
    return Candidate(task_id, 0, None, gpu_memory=int(gib * GIB), **kw)  # type: ignore[arg-type]


def where(result: object) -> dict[int, tuple[str, tuple[int, ...]]]:
    return {p.task_id: (p.host, p.gpu_ids) for p in result.placements}  # type: ignore[attr-defined]


def test_small_tasks_pack_one_card_and_leave_the_other_whole() -> None:
    hosts = [host("a", gpu(0, 80), gpu(1, 40))]
    tasks = [mem(i, 10) for i in range(1, 5)] + [Candidate(5, 0, 1)]
    got = where(plan(tasks, hosts))
    assert {got[i] for i in range(1, 5)} == {("a", (0,))}
    assert got[5] == ("a", (1,))


def test_best_fit_takes_the_shared_gpu_left_with_least_room() -> None:
    hosts = [
        host("a", gpu(0, 80, room=30 * GIB, sharers=(7,)), gpu(1, 80, room=12 * GIB, sharers=(8,))),
        host("b", gpu(0, 80)),
    ]
    assert where(plan([mem(1, 10)], hosts)) == {1: ("a", (1,))}


def test_memory_over_the_room_waits_with_a_reason() -> None:
    hosts = [host("a", gpu(0, 24, room=5 * GIB, sharers=(3,)))]
    result = plan([mem(1, 10)], hosts)
    assert not result.placements
    assert result.waiting[1].startswith("no GPU with 10 GiB free: a GPU 0 shared by task 3")


def test_exclusive_task_never_takes_a_shared_gpu() -> None:
    hosts = [host("a", gpu(0, 80, room=70 * GIB, sharers=(3,)))]
    result = plan([Candidate(1, 0, 1)], hosts)
    assert not result.placements and 1 in result.waiting


def test_max_tasks_per_gpu_caps_sharing() -> None:
    hosts = [host("a", gpu(0, 80), max_tasks_per_gpu=2)]
    result = plan([mem(i, 1) for i in (1, 2, 3)], hosts)
    assert set(where(result)) == {1, 2} and 3 in result.waiting


def test_max_gpus_leaves_the_rest_to_colleagues() -> None:
    hosts = [host("a", gpu(0, 24), gpu(1, 24), gpu(2, 24), max_gpus=2)]
    result = plan([Candidate(i, 0, 1) for i in (1, 2, 3)], hosts)
    assert sorted(g for _, ids in where(result).values() for g in ids) == [0, 1]
    assert 3 in result.waiting


def test_gpu_order_is_the_order_gpus_are_taken_in() -> None:
    hosts = [host("a", gpu(0, 24), gpu(1, 24), gpu(2, 24), gpu_order=(2, 0))]
    result = plan([Candidate(i, 0, 1) for i in (1, 2, 3)], hosts)
    assert [where(result)[i][1] for i in (1, 2, 3)] == [(2,), (0,), (1,)]


def test_an_exclusive_task_takes_the_smallest_free_card_before_gpu_order() -> None:
    hosts = [host("a", gpu(0, 80), gpu(1, 40), gpu(2, 40), gpu_order=(0, 2))]
    result = plan([Candidate(1, 0, 1)], hosts)
    assert where(result)[1] == ("a", (2,))  # the 40 GiB cards first; of those, gpu_order's


def test_type_and_size_constraints_and_their_reasons() -> None:
    hosts = [host("a", gpu(0, 24, name="NVIDIA RTX 4090"), gpu(1, 80, name="NVIDIA H100"))]
    got = where(plan([Candidate(1, 0, 1, gpu_type="a100|h100")], hosts))
    assert got == {1: ("a", (1,))}
    never = plan([Candidate(2, 0, 1, gpu_type="V100")], hosts).impossible
    assert never == {2: "no GPU of type V100"}
    big = plan([Candidate(3, 0, 1, min_gpu_memory=100 * GIB)], hosts).impossible
    assert big == {3: "no GPU with at least 100 GiB"}


def test_unknown_gpu_names_never_make_a_task_impossible() -> None:
    hosts = [host("a", GpuInfo(0, None, None))]  # pinned GPUs, never queried: no name or size
    result = plan([Candidate(1, 0, 1, gpu_type="H100")], hosts)
    assert not result.impossible and 1 in result.waiting


@st.composite
def fake_gpu(draw: st.DrawFn, index: int) -> GpuInfo:
    """A GPU as capacity.py reports it: free, foreign, held whole or shared by our tasks."""
    total = draw(st.integers(1, 80)) * GIB
    used = draw(st.integers(0, 80)) * GIB
    sharers = tuple(range(100, 100 + draw(st.integers(0, 3))))
    held = draw(st.booleans()) and not sharers
    return GpuInfo(
        index,
        99 if held else None,
        "bob" if draw(st.booleans()) else None,
        draw(st.sampled_from(["NVIDIA A100", "NVIDIA H100", "RTX 4090"])),
        total,
        max(0, total - used),
        sharers,
    )


@st.composite
def fleet(draw: st.DrawFn) -> list[list[GpuInfo]]:
    sizes = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    return [[draw(fake_gpu(i)) for i in range(n)] for n in sizes]


@st.composite
def candidate(draw: st.DrawFn, task_id: int) -> Candidate:
    memory = draw(st.one_of(st.none(), st.integers(1, 40)))
    return Candidate(
        task_id,
        0,
        draw(st.sampled_from([None, 1, 2])),
        gpu_memory=None if memory is None else memory * GIB,
        gpu_type=draw(st.sampled_from([None, "A100", "h100|a100"])),
    )


@settings(max_examples=300, deadline=None)
@given(
    fleet(),
    st.integers(0, 12).flatmap(lambda n: st.tuples(*(candidate(k) for k in range(1, n + 1)))),
    st.one_of(st.none(), st.integers(1, 3)),
    st.one_of(st.none(), st.integers(0, 4)),
)
def test_no_gpu_is_ever_given_more_than_its_room(
    gpus: list[list[GpuInfo]],
    cands: tuple[Candidate, ...],
    per_gpu: int | None,
    max_gpus: int | None,
) -> None:
    infos = {(f"h{h}", g.index): g for h, row in enumerate(gpus) for g in row}
    caps = [
        host(f"h{h}", *row, order=h, max_tasks_per_gpu=per_gpu, max_gpus=max_gpus)
        for h, row in enumerate(gpus)
    ]
    need = {c.id: c for c in cands}
    result = plan(cands, caps)
    declared: dict[tuple[str, int], int] = {}
    exclusive: set[tuple[str, int]] = set()
    shared: dict[tuple[str, int], int] = {}
    opened: dict[str, set[int]] = {}
    for p in result.placements:
        c = need[p.task_id]
        assert len(p.gpu_ids) == (c.gpus or 1) == len(set(p.gpu_ids))
        for i in p.gpu_ids:
            key = (p.host, i)
            info = infos[key]
            assert info.held_by_task is None  # nobody ever joins an exclusive holder
            if c.gpu_type:
                assert any(part.lower() in info.name.lower() for part in c.gpu_type.split("|"))
            if not info.sharers:
                opened.setdefault(p.host, set()).add(i)
            if c.gpu_memory is None:  # an exclusive task never shares
                assert info.foreign is None and not info.sharers
                assert key not in exclusive and key not in shared
                exclusive.add(key)
            else:
                assert key not in exclusive
                declared[key] = declared.get(key, 0) + c.gpu_memory
                shared[key] = shared.get(key, 0) + 1
    for key, total in declared.items():
        assert total <= (infos[key].room or 0)  # the declared sum never exceeds the free memory
        if per_gpu is not None:
            assert len(infos[key].sharers) + shared[key] <= per_gpu
    if max_gpus is not None:
        for name, new in opened.items():
            ours = [g for (h, _), g in infos.items() if h == name and (g.sharers or g.held_by_task)]
            assert len(new) <= max(0, max_gpus - len(ours))


def test_a_cuda_oom_retry_asks_for_more_than_it_had() -> None:
    from dispatcher.core.gpu_packing import oom_retry_needs

    mib = 2**20
    # Declared 10 GiB, held 20 when it died where 24 GiB were free for it: more than 24 next.
    assert oom_retry_needs(10 * GIB, None, 20 * GIB, 24 * GIB, 80 * GIB) == {
        "gpu_memory": 24 * GIB + mib
    }
    # Held more than was free (the reading lagged): at least what it held.
    assert oom_retry_needs(10 * GIB, None, 30 * GIB, 24 * GIB, 80 * GIB) == {"gpu_memory": 30 * GIB}
    # A whole-GPU task: a bigger card.
    assert oom_retry_needs(None, None, 39 * GIB, 40 * GIB, 40 * GIB) == {
        "min_gpu_memory": 40 * GIB + mib
    }
    assert oom_retry_needs(None, None, 0, None, None) == {}
