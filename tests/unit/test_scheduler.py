"""The placement rules of core.scheduler, one test per rule, plus hypothesis invariants."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core import scheduler
from dispatcher.core.scheduler import Candidate, GpuInfo, HostCapacity, Placement, Plan, plan

BOB = "11.2 GiB used by bob (pid 77)"


def host(
    name: str,
    gpus: int = 0,
    *,
    order: int = 0,
    held: dict[int, int] | None = None,
    foreign: dict[int, str] | None = None,
    slots: int = 0,
    used: int = 0,
    usable: bool = True,
    reason: str | None = None,
    known: bool = True,
) -> HostCapacity:
    held, foreign = held or {}, foreign or {}
    infos = tuple(GpuInfo(i, held.get(i), foreign.get(i)) for i in range(gpus)) if known else ()
    return HostCapacity(name, order, usable, reason, infos, slots, used, known)


def task(id: int, gpus: int | None = None, priority: int = 0) -> Candidate:
    return Candidate(id, priority, gpus)


def placed(p: Plan) -> dict[int, tuple[str, tuple[int, ...]]]:
    return {x.task_id: (x.host, x.gpu_ids) for x in p.placements}


# --- rule 1 and 5: order and backfill ------------------------------------------------------------


def test_higher_priority_first_then_lower_id() -> None:
    p = plan([task(5), task(3), task(9, priority=1), task(4)], [host("a", 2)])
    assert [x.task_id for x in p.placements] == [9, 3]
    assert set(p.waiting) == {4, 5}


def test_a_big_task_that_does_not_fit_does_not_block_smaller_ones() -> None:
    p = plan([task(1, gpus=4, priority=9), task(2, gpus=1)], [host("a", 4, held={0: 7})])
    assert placed(p) == {2: ("a", (1,))}
    assert p.waiting[1].startswith("needs 4 free GPUs on one host: a GPU 0 held by task 7")


# --- rule 2 and 3: needs and free GPUs -----------------------------------------------------------


def test_held_and_foreign_gpus_are_skipped_and_lowest_free_indices_win() -> None:
    h = host("a", 6, held={0: 1, 3: 2}, foreign={1: BOB})
    p = plan([task(10, gpus=2), task(11, gpus=1)], [h])
    assert placed(p) == {10: ("a", (2, 4)), 11: ("a", (5,))}


def test_n_gpus_must_be_on_one_host() -> None:
    hosts = [host("a", 2, held={0: 1}), host("b", 2, order=1, held={1: 2})]
    p = plan([task(1, gpus=2)], hosts)
    assert p.placements == ()
    assert p.waiting[1] == (
        "needs 2 free GPUs on one host: "
        "a GPU 0 held by task 1, 1 free; b GPU 1 held by task 2, 1 free"
    )


def test_default_task_takes_one_gpu_on_a_gpu_host_and_a_slot_on_a_cpu_host() -> None:
    assert placed(plan([task(1)], [host("g", 2)])) == {1: ("g", (0,))}
    assert placed(plan([task(1)], [host("c", slots=2)])) == {1: ("c", ())}


def test_default_task_prefers_a_free_gpu_then_falls_back_to_a_cpu_slot() -> None:
    hosts = [host("cpu", slots=4, order=0), host("gpu", 1, order=1)]
    p = plan([task(1), task(2), task(3, gpus=1)], hosts)
    assert placed(p) == {1: ("gpu", (0,)), 2: ("cpu", ())}
    assert p.waiting[3] == "waiting for a free GPU (1 task ahead)"


def test_default_task_never_takes_a_gpu_hosts_slots() -> None:
    p = plan([task(1)], [host("g", 1, held={0: 5}, slots=3)])
    assert p.placements == ()
    assert p.waiting[1] == "no free GPU: g GPU 0 held by task 5"


def test_zero_gpu_task_takes_a_slot_on_gpu_or_cpu_hosts_only_where_slots_exist() -> None:
    hosts = [host("g0", 2, order=0), host("g1", 2, order=1, slots=1), host("c", order=2, slots=1)]
    p = plan([task(1, gpus=0), task(2, gpus=0), task(3, gpus=0)], hosts)
    assert placed(p) == {1: ("g1", ()), 2: ("c", ())}
    assert p.waiting[3] == "waiting for a free slot (2 tasks ahead)"


def test_slots_used_beyond_total_offer_nothing() -> None:
    p = plan([task(1, gpus=0)], [host("c", slots=1, used=3)])
    assert p.waiting == {1: "no free slot: c 3/1 slots used"}


# --- rule 4: which host ----------------------------------------------------------------------


def test_the_host_with_most_free_units_wins_then_lower_order() -> None:
    hosts = [host("b", 4, order=1, held={0: 1}), host("a", 4, order=0, held={0: 2, 1: 3})]
    assert placed(plan([task(1)], hosts))[1][0] == "b"
    tie = [host("late", 2, order=5), host("early", 2, order=2)]
    p = plan([task(1), task(2), task(3)], tie)
    assert [x.host for x in p.placements] == ["early", "late", "early"]


def test_slot_tasks_spread_by_free_slots() -> None:
    hosts = [host("a", slots=2, order=0), host("b", slots=3, order=1)]
    p = plan([task(i, gpus=0) for i in range(4)], hosts)
    assert [x.host for x in p.placements] == ["b", "a", "b", "a"]


def test_unusable_and_unqueried_hosts_get_nothing() -> None:
    hosts = [
        host("down", 8, usable=False, reason="unreachable since 12:03 (connection refused)"),
        host("new", known=False, slots=4, order=1),
    ]
    p = plan([task(1), task(2, gpus=0)], hosts)
    assert p.placements == ()
    assert p.waiting[1] == (
        "no free GPU: down unreachable since 12:03 (connection refused); new not yet queried"
    )
    assert p.waiting[2] == "no free slot: new not yet queried"


# --- rule 6: impossible ----------------------------------------------------------------------


def test_more_gpus_than_the_largest_host_is_impossible() -> None:
    hosts = [host("gpu-a", 2), host("gpu-b", 1, order=1, usable=False, reason="suspended")]
    p = plan([task(1, gpus=4), task(2, gpus=2)], hosts)
    assert p.impossible == {1: "needs 4 GPUs on one host; the largest host (gpu-a) has 2"}
    assert placed(p) == {2: ("gpu-a", (0, 1))}


def test_an_unusable_host_still_counts_as_configured() -> None:
    hosts = [host("a", 1), host("big", 8, order=1, usable=False, reason="suspended")]
    p = plan([task(1, gpus=8)], hosts)
    assert p.impossible == {}
    assert p.waiting[1] == "needs 8 free GPUs on one host: big suspended"


def test_nothing_is_impossible_while_a_hosts_gpus_are_unknown() -> None:
    p = plan([task(1, gpus=16), task(2, gpus=0)], [host("a", 1), host("b", known=False)])
    assert p.impossible == {}
    assert set(p.waiting) == {1, 2}


@pytest.mark.parametrize(
    ("hosts", "gpus", "why"),
    [
        ([host("c", slots=1)], 2, "needs 2 GPUs; no configured host has GPUs"),
        ([host("g", 2)], 0, "needs a slot (--gpus 0); no host offers slots"),
        ([host("g", 0)], None, "needs a GPU or a slot; no configured host has GPUs or slots"),
        ([host("g", 2)], -1, "asks for -1 GPUs"),
        ([], 1, "no hosts configured; add one to hosts.toml"),
    ],
)
def test_impossible_reasons(hosts: list[HostCapacity], gpus: int | None, why: str) -> None:
    p = plan([task(1, gpus=gpus)], hosts)
    assert p.impossible[1].startswith(why)
    assert p.waiting == {} and p.placements == ()


# --- rule 7: waiting reasons -----------------------------------------------------------------


def test_waiting_reason_names_every_busy_gpu_and_down_host() -> None:
    hosts = [
        host("gpu-a", 2, held={0: 12}, foreign={1: BOB}),
        host("gpu-b", 4, order=1, usable=False, reason="unreachable (connection refused)"),
    ]
    p = plan([task(1)], hosts)
    assert p.waiting[1] == (
        "no free GPU: gpu-a GPU 0 held by task 12, GPU 1: 11.2 GiB used by bob (pid 77); "
        "gpu-b unreachable (connection refused)"
    )


def test_a_reason_that_already_names_its_host_is_not_prefixed_again() -> None:
    hosts = [host("gpu-a", 1, usable=False, reason="gpu-a suspended after 5 failures in a row")]
    assert (
        plan([task(1)], hosts).waiting[1]
        == "no free GPU: gpu-a suspended after 5 failures in a row"
    )


def test_capacity_taken_in_this_plan_is_reported_as_tasks_ahead() -> None:
    p = plan([task(1), task(2), task(3), task(4, gpus=0)], [host("a", 2, slots=1)])
    assert p.waiting[3] == "waiting for a free GPU (2 tasks ahead)"
    assert 4 in placed(p)


def test_mixed_pools_say_gpu_or_slot() -> None:
    p = plan([task(1)], [host("g", 1, held={0: 3}), host("c", slots=1, used=1, order=1)])
    assert p.waiting[1] == "no free GPU or slot: g GPU 0 held by task 3; c 1/1 slots used"


def test_many_hosts_are_summarised_under_200_chars() -> None:
    hosts = [host(f"node{i:02}", 8, order=i, held=dict.fromkeys(range(8), i)) for i in range(50)]
    hosts.append(
        host("x", 8, order=99, usable=False, reason="suspended: 5 failures in a row", slots=2)
    )
    p = plan([task(1), task(2, gpus=3), task(3, gpus=0)], hosts)
    for why in (p.waiting[1], p.waiting[2]):
        assert len(why) < 200
        assert "node00 8/8 GPUs busy (8 by tasks)" in why
        assert why.endswith("more hosts")
    assert p.waiting[3] == "no free slot: x suspended: 5 failures in a row"


def test_long_foreign_texts_and_reasons_are_summarised_not_cut() -> None:
    hosts = [host("a", 1, foreign={0: "x" * 500}), host("b", 1, usable=False, reason="y" * 500)]
    why = plan([task(1)], hosts).waiting[1]
    assert why == "no free GPU: a 1/1 GPUs busy (1 by others); +1 more hosts"


def test_an_unusable_hosts_detail_is_dropped_whole_never_cut() -> None:
    reason = "suspended after 5 failures in a row (" + "could not start: " + "z" * 300 + ")"
    hosts = [host("a", slots=1, usable=False, reason=reason)]
    why = plan([task(1, gpus=0)], hosts).waiting[1]
    assert why == "no free slot: a suspended after 5 failures in a row"


def test_an_id_given_twice_is_decided_once() -> None:
    p = plan([task(1), task(1, priority=5)], [host("a", 4)])
    assert p.placements == (Placement(1, "a", (0,)),)
    assert p.waiting == {}


def test_reasons_are_built_once_per_need_not_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: Counter[str] = Counter()
    real_summary = scheduler._summary

    def summary(prefix: str, detail: list[str], short: list[str]) -> str:
        calls["summary"] += 1
        return real_summary(prefix, detail, short)

    monkeypatch.setattr(scheduler, "_summary", summary)
    hosts = [host(f"h{i}", 4, order=i, held={0: 1, 1: 2}) for i in range(50)]
    tasks = [task(i, gpus=[None, 0, 1, 2, 3][i % 5], priority=i % 7) for i in range(10_000)]
    p = plan(tasks, hosts)
    assert sum(len(x.gpu_ids) for x in p.placements) == 100  # every free GPU of 50 hosts
    assert len(p.waiting) + len(p.placements) == 8000  # 2000 slot tasks are impossible
    assert calls["summary"] == 1  # only "3 GPUs" never fit; its text serves 2000 tasks


# --- invariants --------------------------------------------------------------------------


@st.composite
def host_lists(draw: st.DrawFn) -> list[HostCapacity]:
    hosts = []
    for i in range(draw(st.integers(0, 5))):
        known = draw(st.booleans()) if draw(st.integers(0, 4)) == 0 else True
        states = draw(st.lists(st.sampled_from(["free", "held", "foreign"]), max_size=4))
        gpus = tuple(
            GpuInfo(j, 100 + j if s == "held" else None, BOB if s == "foreign" else None)
            for j, s in enumerate(states)
        )
        usable = draw(st.integers(0, 4)) > 0
        hosts.append(
            HostCapacity(
                name=f"h{i}",
                order=i,
                usable=usable,
                unusable_reason=None if usable else "unreachable (timed out)",
                gpus=gpus if known else (),
                slots_total=draw(st.integers(0, 3)),
                slots_used=draw(st.integers(0, 4)),
                gpus_known=known,
            )
        )
    return hosts


candidate_lists = st.lists(
    st.builds(
        Candidate,
        id=st.integers(0, 60),
        priority=st.integers(-2, 2),
        gpus=st.one_of(st.none(), st.integers(-1, 5)),
    ),
    max_size=30,
    unique_by=lambda c: c.id,
)


def _free(h: HostCapacity) -> list[int]:
    if not (h.usable and h.gpus_known):
        return []
    return [g.index for g in h.gpus if g.held_by_task is None and g.foreign is None]


def _fits(
    c: Candidate, free_gpus: dict[str, int], free_slots: dict[str, int], cpu: set[str]
) -> bool:
    if c.gpus is None:
        return any(free_gpus.values()) or any(free_slots[n] for n in cpu)
    if c.gpus == 0:
        return any(free_slots.values())
    return any(f >= c.gpus for f in free_gpus.values())


@settings(max_examples=150, deadline=None)
@given(host_lists(), candidate_lists)
def test_plan_invariants(hosts: list[HostCapacity], candidates: list[Candidate]) -> None:
    p = plan(candidates, hosts)
    by_name = {h.name: h for h in hosts}
    rank = {c.id: (-c.priority, c.id) for c in candidates}
    want = {c.id: c.gpus for c in candidates}
    cpu = {h.name for h in hosts if h.gpus_known and not h.gpus}

    # Every candidate is decided exactly once.
    ids = [x.task_id for x in p.placements]
    assert len(ids) == len(set(ids))
    assert set(ids).isdisjoint(p.waiting) and set(ids).isdisjoint(p.impossible)
    assert set(p.waiting).isdisjoint(p.impossible)
    assert set(ids) | set(p.waiting) | set(p.impossible) == set(want)
    assert ids == sorted(ids, key=rank.__getitem__)  # placements come in queue order

    # Only free capacity on usable hosts is used, each GPU once, with the right amount.
    free_gpus = {h.name: set(_free(h)) for h in hosts}
    free_slots = {
        h.name: max(0, h.slots_total - h.slots_used) for h in hosts if h.usable and h.gpus_known
    }
    for x in p.placements:
        h = by_name[x.host]
        assert h.usable and h.gpus_known
        assert list(x.gpu_ids) == sorted(x.gpu_ids)
        assert set(x.gpu_ids) <= free_gpus[x.host], "GPU not free or assigned twice"
        free_gpus[x.host] -= set(x.gpu_ids)
        need = want[x.task_id]
        if need is None:
            assert (len(x.gpu_ids) == 1 and h.gpus) or (not x.gpu_ids and x.host in cpu)
        else:
            assert len(x.gpu_ids) == need
        if not x.gpu_ids:
            free_slots[x.host] -= 1
            assert free_slots[x.host] >= 0, "more slots used than free"

    # Nothing left over could take a waiting task (the plan is greedy all the way).
    left_gpus = {n: len(g) for n, g in free_gpus.items()}
    left_slots = {n: free_slots.get(n, 0) for n in by_name}
    for tid in p.waiting:
        assert not _fits(Candidate(tid, 0, want[tid]), left_gpus, left_slots, cpu)

    # No inversion: a waiting task never needs less than a later-ranked task received.
    for w in p.waiting:
        for x in p.placements:
            if rank[x.task_id] < rank[w]:
                continue
            need = want[w]
            if need is None:
                assert not (x.gpu_ids or x.host in cpu)
            elif need == 0:
                assert x.gpu_ids
            else:
                assert len(x.gpu_ids) < need

    # Impossible means: every host known and none could ever fit it (or a negative request).
    all_known = bool(hosts) and all(h.gpus_known for h in hosts)
    biggest = max((len(h.gpus) for h in hosts), default=0)
    for c in candidates:
        if (c.gpus is not None and c.gpus < 0) or not hosts:
            never = True
        elif c.gpus is None:
            never = (
                all_known and not biggest and not any(h.slots_total for h in hosts if h.name in cpu)
            )
        elif c.gpus == 0:
            never = all_known and not any(h.slots_total for h in hosts)
        else:
            never = all_known and c.gpus > biggest
        assert (c.id in p.impossible) == never

    for why in [*p.waiting.values(), *p.impossible.values()]:
        assert 0 < len(why) < 200


@settings(max_examples=60, deadline=None)
@given(host_lists(), candidate_lists, st.randoms(use_true_random=False))
def test_plan_is_deterministic(
    hosts: list[HostCapacity], candidates: list[Candidate], rnd: random.Random
) -> None:
    first = plan(candidates, hosts)
    rnd.shuffle(hosts)
    rnd.shuffle(candidates)
    assert plan(candidates, hosts) == first


@settings(max_examples=60, deadline=None)
@given(host_lists(), candidate_lists)
def test_replanning_the_rest_places_nothing_more(
    hosts: list[HostCapacity], candidates: list[Candidate]
) -> None:
    """Applying a plan and planning again is a fixed point: the engine's loop cannot flap."""
    p = plan(candidates, hosts)
    got: dict[str, list[Placement]] = {}
    for x in p.placements:
        got.setdefault(x.host, []).append(x)
    after = []
    for h in hosts:
        mine = got.get(h.name, [])
        taken = {i: x.task_id for x in mine for i in x.gpu_ids}
        gpus = tuple(
            GpuInfo(g.index, taken.get(g.index, g.held_by_task), g.foreign) for g in h.gpus
        )
        used = h.slots_used + sum(1 for x in mine if not x.gpu_ids)
        after.append(
            HostCapacity(
                h.name,
                h.order,
                h.usable,
                h.unusable_reason,
                gpus,
                h.slots_total,
                used,
                h.gpus_known,
            )
        )
    rest = [c for c in candidates if c.id in p.waiting]
    again = plan(rest, after)
    assert again.placements == ()
    assert set(again.waiting) == set(p.waiting)


def test_the_short_form_splits_tasks_from_others() -> None:
    hosts = [host(f"h{i:02}", 2, order=i, held={0: i}, foreign={1: "x" * 50}) for i in range(20)]
    why = plan([task(1)], hosts).waiting[1]
    assert why.startswith("no free GPU: h00 2/2 GPUs busy (1 by tasks, 1 by others); h01 ")
    assert len(why) < 200


# --- rule 7: max_running per sweep ---------------------------------------------------------------


def sweep_task(id: int, group: str, limit: int | None, priority: int = 0) -> Candidate:
    return Candidate(id, priority, 0, group, limit)


def test_a_sweep_at_its_limit_waits_and_does_not_block_others() -> None:
    cands = [sweep_task(i, "lr", 2) for i in range(1, 6)] + [sweep_task(9, "other", None)]
    p = plan(cands, [host("cpu", slots=8)], {"lr": 1})
    assert sorted(placed(p)) == [1, 9]  # one more of "lr" (1 already runs), and the other sweep
    assert p.waiting == dict.fromkeys([2, 3, 4, 5], "sweep lr at its limit of 2 running")


def test_the_limit_counts_placements_of_this_plan_and_lowered_limits_place_none() -> None:
    p = plan([sweep_task(i, "s", 3, priority=-i) for i in range(1, 6)], [host("cpu", slots=8)])
    assert sorted(placed(p)) == [1, 2, 3]
    assert set(p.waiting) == {4, 5}
    lowered = plan([sweep_task(7, "s", 1)], [host("cpu", slots=8)], {"s": 2})
    assert not lowered.placements and lowered.waiting[7].startswith("sweep s at its limit of 1")


def test_throttled_tasks_are_not_counted_as_tasks_ahead() -> None:
    cands = [sweep_task(1, "s", 1), sweep_task(2, "s", 1), Candidate(3, 0, 0), Candidate(4, 0, 0)]
    p = plan(cands, [host("cpu", slots=2)])
    assert sorted(placed(p)) == [1, 3]
    assert p.waiting[4] == "waiting for a free slot (2 tasks ahead)"


def test_an_impossible_task_says_so_even_when_its_sweep_is_at_its_limit() -> None:
    p = plan([Candidate(1, 0, 4, "s", 1)], [host("a", 2)], {"s": 5})
    assert p.impossible[1].startswith("needs 4 GPUs on one host")


@st.composite
def throttled_lists(draw: st.DrawFn) -> list[Candidate]:
    """Candidates in sweeps a, b, c; every task of one sweep carries that sweep's limit."""
    limits = {g: draw(st.one_of(st.none(), st.integers(1, 4))) for g in "abc"}
    out = []
    for c in draw(candidate_lists):
        group = draw(st.sampled_from([None, "a", "b", "c"]))
        limit = None if group is None else limits[group]
        out.append(Candidate(c.id, c.priority, c.gpus, group, limit))
    return out


@settings(max_examples=200, deadline=None)
@given(
    host_lists(),
    throttled_lists(),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 5)),
)
def test_never_more_than_k_of_a_sweep_active_after_placement(
    hosts: list[HostCapacity], candidates: list[Candidate], active: dict[str, int]
) -> None:
    p = plan(candidates, hosts, active)
    by_id = {c.id: c for c in candidates}
    after = Counter(active)
    after.update(g for x in p.placements if (g := by_id[x.task_id].group) is not None)
    for x in p.placements:
        c = by_id[x.task_id]
        if c.max_running is not None and c.group is not None:
            assert active.get(c.group, 0) < c.max_running  # it had room when placed
            assert after[c.group] <= c.max_running  # and the plan never overfills the sweep
    for i, why in p.waiting.items():
        c = by_id[i]
        if why.startswith("sweep "):
            assert c.max_running is not None and c.group is not None
            assert after[c.group] >= c.max_running
            assert why == f"sweep {c.group} at its limit of {c.max_running} running"
