"""How the dispatcher turns one ``launches`` reply into reports (a stub session stands in
for the helper; the real helper's side is tested in test_helper_local.py and over sshd)."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dispatcher.config.hosts import HostsConfig
from dispatcher.core.deps import DepKind, Gate
from dispatcher.core.models import NewTask, Task, TaskState
from dispatcher.dispatch.hostcalls import HostCalls
from dispatcher.dispatch.jobs import Jobs
from dispatcher.dispatch.logs import LogCollector, log_path
from dispatcher.dispatch.reports import Reports
from dispatcher.dispatch.state import DispatchOptions, HostState, LoopState
from dispatcher.store.queue import Store

S = TaskState


class StubSession:
    def __init__(self, reply: dict[str, Any]) -> None:
        self.name = "h1"
        self.spec = SimpleNamespace(
            env={},
            setup=None,
            workdir=None,
            kill_grace=5,
            outputs=(),
            max_log_size=1 << 20,
            sync=False,
            slurm=None,
        )
        self.reply = reply
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        self.calls.append((op, params))
        return self.reply


class Quiet:
    def log(self, message: str, *, style: str = "") -> None:
        pass


async def never() -> None:
    raise AssertionError("a launch does not wait for the queue file")


def host_calls(session: StubSession, tmp_path: Path) -> tuple[HostCalls, Reports]:
    state = LoopState(hosts={"h1": HostState(session, 0)})  # type: ignore[arg-type]
    store = Store(tmp_path / "queue.duckdb")
    config = HostsConfig(tmp_path / "hosts.toml", (), None)
    jobs = Jobs(Quiet(), state.wake)
    reports = Reports(state, store, config, Quiet(), LogCollector(tmp_path / "logs"), jobs)
    return HostCalls(state, store, DispatchOptions(), Quiet(), jobs, reports, never), reports


def task(i: int) -> Task:
    return Task(id=i, state=TaskState.LAUNCHING, args={}, template="t", command="true",
                host="h1", run_id=f"t{i}-a1-x")  # fmt: skip


async def test_one_request_for_the_round_and_a_report_per_run(tmp_path: Path) -> None:
    done = {"run_id": "t3-a1-x", "state": "exited", "exit_code": 0,
            "log": base64.b64encode(b"hi\n").decode(), "log_size": 3}  # fmt: skip
    reply = {"runs": {"t1-a1-x": {"status": "started"},
                      "t2-a1-x": {"status": "error", "error": "spec.command is empty"},
                      "t3-a1-x": {"status": "exists", "run": done}}}  # fmt: skip
    session = StubSession(reply)
    calls, reports = host_calls(session, tmp_path)
    await calls._launch("h1", [task(1), task(2), task(3), task(4)])
    assert [op for op, _ in session.calls] == ["launches"]
    assert [r["run_id"] for r in session.calls[0][1]["runs"]] == [
        f"t{i}-a1-x" for i in (1, 2, 3, 4)
    ]
    states = {r["run_id"]: (r["state"], r.get("error")) for _, r in reports.take()}
    assert states == {
        "t1-a1-x": ("running", None),
        "t2-a1-x": ("launch_error", "h1: spec.command is empty"),
        "t3-a1-x": ("exited", None),
        "t4-a1-x": ("launch_error", "h1: no reply"),
    }
    # A run that had already ended is collected like any exit: its log is on the controller.
    assert log_path(tmp_path / "logs", "t3-a1-x").read_bytes() == b"hi\n"


def test_a_dependent_submitted_ahead_is_not_sent_again_without_its_gates(tmp_path: Path) -> None:
    # A dependent placed ahead on a cluster is recorded `launching` with what SLURM must hold it
    # back on kept in memory only; a dispatcher that ends before its launch reaches the host
    # finds the run absent after a restart, with those gates gone. Sent again then, it would
    # run at once, before its dependency ended: it goes back to pending instead, nothing counted.
    _, reports = host_calls(StubSession({}), tmp_path)
    store = reports.store
    dep, done = store.add([NewTask({"i": i}, "t", f"run {i}") for i in range(2)]).ids
    ahead, ready, known = store.add(
        [
            NewTask({"d": 1}, "t", "d1", after=(dep,)),
            NewTask({"d": 2}, "t", "d2", after=(done,)),
            NewTask({"d": 3}, "t", "d3", after_any=(dep,)),
        ]
    ).ids
    with store.transaction() as tx:
        tx.move(dep, S.LAUNCHING, host="h1", run_id="t1-a1-x", gpu_ids=[])
        tx.move(dep, S.RUNNING, run_id="t1-a1-x", job_id="12_0")
        tx.move(done, S.CANCELLED)
        tx.move(done, S.PENDING)
        tx.move(done, S.LAUNCHING, host="h1", run_id="t2-a1-x", gpu_ids=[])
        tx.move(done, S.SUCCEEDED, run_id="t2-a1-x")
        for i in (ahead, ready, known):
            moved = tx.move(i, S.LAUNCHING, host="h1", run_id=f"t{i}-a1-x", gpu_ids=[])
            assert moved is not None
            reports.state.active[i] = moved
    reports.state.gates[known] = [Gate(DepKind.AFTER_ANY, dep, "t1-a1-x", "12_0", True)]
    with store.transaction() as tx:
        for i in (ahead, ready, known):
            reports.apply(tx, "h1", {"run_id": f"t{i}-a1-x", "state": "absent"})
    assert sorted(t.id for t in reports.take_resends()) == [ready, known]
    back = store.get(ahead)
    assert back.state is S.PENDING and back.attempt == 0 and back.losses == 0
    assert back.reason == "waits for task 1"
    assert ahead not in reports.state.active


def test_a_withdrawn_run_of_a_task_the_user_cancelled_cancels_it(tmp_path: Path) -> None:
    # `queue cancel` of a task submitted ahead flags it; when its withdrawn run is reported
    # first (held back on the cluster, maybe while no dispatch ran), it must not go back to
    # pending, which would drop the request and run it later.
    _, reports = host_calls(StubSession({}), tmp_path)
    store = reports.store
    dep, gated, other = store.add(
        [NewTask({}, "t", "dep"), NewTask({"d": 1}, "t", "d1"), NewTask({"d": 2}, "t", "d2")]
    ).ids
    with store.transaction() as tx:
        for i in (dep, gated, other):
            tx.move(i, S.LAUNCHING, host="h1", run_id=f"t{i}-a1-x", gpu_ids=[])
            tx.move(i, S.RUNNING, run_id=f"t{i}-a1-x", job_id=f"1{i}_0")
        tx.request_cancel([gated])
    for i in (gated, other):
        reports.state.active[i] = store.get(i)
    assert reports.state.active[gated].cancel_requested
    with store.transaction() as tx:
        for i in (gated, other):
            report = {"run_id": f"t{i}-a1-x", "state": "exited", "withdrawn": "task 1 failed"}
            reports.apply(tx, "h1", report)
    cancelled, back = store.get(gated), store.get(other)
    assert cancelled.state is S.CANCELLED and cancelled.reason == "cancelled by user"
    assert cancelled.attempt == 0
    assert back.state is S.PENDING and back.reason == "withdrawn from h1: task 1 failed"
