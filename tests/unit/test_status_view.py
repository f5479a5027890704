"""What ``status`` and ``dispatch`` show: ETA, GPU use per host, staleness (rendered for real)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console, RenderableType

from dispatcher.config.hosts import make_host
from dispatcher.core.models import NewTask, Task, TaskState
from dispatcher.dispatch.logs import gpu_views, read_status_file, write_last_lines
from dispatcher.dispatch.state import Snapshot
from dispatcher.remote.session import GpuInventory, HostSession
from dispatcher.store.queue import Store
from dispatcher.transport.transports import SSHOptions
from dispatcher.ui.views import eta_seconds, eta_text, freshness, gpu_table, progress_panel

S = TaskState


def render(thing: RenderableType) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(thing)
    return console.export_text()


def test_eta_is_median_times_remaining_over_running() -> None:
    assert eta_seconds(60.0, remaining=10, running=2) == 300.0
    assert eta_seconds(None, remaining=10, running=2) is None
    assert eta_seconds(60.0, remaining=10, running=0) is None
    counts = {S.RUNNING: 2, S.PENDING: 22}
    assert eta_text(60.0, counts).plain == "ETA ~12 min"
    assert eta_text(None, counts).plain == "ETA unknown"
    assert eta_text(10.0, {S.RUNNING: 4}).plain == "ETA <1 min"
    assert eta_text(3600.0, {S.RUNNING: 1, S.PENDING: 2}).plain == "ETA ~3.0 h"
    assert eta_text(60.0, {S.SUCCEEDED: 5}).plain == ""  # nothing left: no ETA


@given(st.floats(0.001, 1e6), st.integers(1, 10**6), st.integers(1, 1000))
def test_eta_grows_with_the_work_left(median: float, remaining: int, running: int) -> None:
    now = eta_seconds(median, remaining, running)
    later = eta_seconds(median, remaining + 1, running)
    assert now is not None and later is not None and 0 < now < later


def test_progress_panel_shows_counts_and_eta() -> None:
    snap = Snapshot({S.RUNNING: 2, S.PENDING: 4, S.SUCCEEDED: 6}, [("gpu1", "up, 2 running")])
    text = render(progress_panel(snap))
    assert "6/12" in text and "2 running · 4 pending · 6 succeeded" in text
    assert "ETA unknown" in text and "gpu1" in text
    snap.median_runtime = 120.0
    assert "ETA ~6 min" in render(progress_panel(snap))


def a_session(name: str, **settings: object) -> HostSession:
    return HostSession(make_host(name, settings), SSHOptions(), lambda *_: None, lambda _: None)


def test_gpu_views_tell_ours_from_others_and_free(tmp_path: Path) -> None:
    session = a_session("gpu1", max_gpu_memory_used="1GiB")
    gpus = [
        {"index": i, "uuid": f"u{i}", "name": "A100", "memory_used_mib": used,
         "memory_total_mib": 40960}
        for i, used in enumerate([20000, 11469, 3])
    ]  # fmt: skip
    procs = [{"gpu_uuid": "u1", "pid": 77, "user": "bob", "used_memory_mib": 11469}]
    session.inventory = GpuInventory(gpus, procs, None, fetched_at=100.0)
    task = Task(id=12, state=S.RUNNING, args={}, template="t", command="t", host="gpu1",
                gpu_ids=[0])  # fmt: skip
    views = gpu_views([session, a_session("cpu", gpus=0)], [task], now=130.0)
    assert views["cpu"] == {"status": "connecting", "gpus": [], "error": None, "age": None}
    by_index = {g["index"]: g for g in views["gpu1"]["gpus"]}
    assert by_index[0]["task"] == 12 and by_index[0]["other"] is None
    assert by_index[1]["other"] == "11.2 GiB used by bob (pid 77)"
    assert by_index[2]["task"] is None and by_index[2]["other"] is None
    write_last_lines(tmp_path / "q.duckdb", {12: "epoch 3"}, hosts=views)
    back = read_status_file(tmp_path / "q.duckdb")
    assert back.lines == {12: "epoch 3"} and back.hosts == views
    assert back.written_at is not None and abs(back.written_at - time.time()) < 600
    lines = render(gpu_table(back.hosts) or "").splitlines()
    assert any("gpu1 30s ago" in x and "task 12" in x and "19.5/40.0" in x for x in lines)
    assert any("bob (pid 77)" in x for x in lines)
    assert any(x.rstrip().endswith("free") for x in lines)


def test_the_gpu_table_shows_memory_declared_used_and_free_with_the_sharing_tasks() -> None:
    session = a_session("gpu1")
    gpus = [
        {"index": i, "uuid": f"u{i}", "name": "H100", "memory_used_mib": used,
         "memory_total_mib": 81920}
        for i, used in enumerate([12288, 0])
    ]  # fmt: skip
    procs = [{"gpu_uuid": "u0", "pid": 5, "user": "me", "used_memory_mib": 12288,
              "run_id": "t3-a1-x"}]  # fmt: skip
    session.inventory = GpuInventory(gpus, procs, None, fetched_at=100.0)
    sharers = [
        Task(id=i, state=S.RUNNING, args={}, template="t", command="t", host="gpu1",
             gpu_ids=[0], gpu_memory=10 * 2**30, run_id=f"t{i}-a1-x")
        for i in (3, 4)
    ]  # fmt: skip
    views = gpu_views([session], sharers, now=100.0)
    first, second = views["gpu1"]["gpus"]
    assert (first["shared_by"], first["declared_mib"]) == ([3, 4], 20480)
    assert first["free_mib"] == 81920 - 12288 - 10240  # task 3 uses 12 of its 10; task 4: 10
    assert (second["shared_by"], second["declared_mib"], second["free_mib"]) == ([], None, 81920)
    lines = render(gpu_table(views) or "").splitlines()
    assert lines[0].split() == ["host", "gpu", "memory", "(GiB)", "declared", "free", "used", "by"]
    assert lines[1].split() == ["gpu1", "0", "12.0/80.0", "20.0", "58.0", "tasks", "3,", "4"]
    assert lines[2].split() == ["1", "0.0/80.0", "80.0", "free"]


def test_no_gpus_means_no_gpu_table() -> None:
    assert gpu_table({}) is None
    assert gpu_table({"cpu": {"gpus": [], "error": None}}) is None
    table = gpu_table({"gpu1": {"gpus": [], "error": "nvidia-smi: not found"}})
    assert table is not None and "nvidia-smi: not found" in render(table)


def test_freshness_says_when_the_view_is_stale() -> None:
    now = 1_000_000.0
    assert freshness(now - 2, now, running=True) is None
    late = freshness(now - 95, now, running=True)
    assert late is not None and "has not reported for 1m35s" in late.plain
    gone = freshness(now - 600, now, running=False)
    assert gone is not None and "No dispatcher is running" in gone.plain and "10m00s" in gone.plain
    assert freshness(None, now, running=True) is None


def test_median_runtime_of_succeeded_tasks(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.duckdb")
    ids = store.add([NewTask({"i": i}, "t %{i}", f"t {i}") for i in range(4)]).ids
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with store.transaction() as tx:
        assert tx.median_runtime() is None
        for task_id, seconds in zip(ids, [10, 30, 50, 999], strict=True):
            tx.move(task_id, S.LAUNCHING, host="h", run_id=f"r{task_id}", attempt=1)
            tx.move(task_id, S.RUNNING, run_id=f"r{task_id}", started_at=start)
            end = S.SUCCEEDED if seconds < 999 else S.FAILED  # failures do not count
            tx.move(task_id, end, run_id=f"r{task_id}", finished_at=start + timedelta(0, seconds))
        assert tx.median_runtime() == 30.0


def test_the_attempt_column_counts_only_attempts_and_names_lost_runs() -> None:
    from dispatcher.ui.views import ls_table

    lost_once = Task(id=1, state=TaskState.SUCCEEDED, args={}, template="t", command="t",
                     attempt=2, losses=1)  # fmt: skip
    failed = Task(id=2, state=TaskState.FAILED, args={}, template="t", command="t", attempt=1)
    console = Console(width=120, record=True)
    console.print(ls_table([lost_once, failed]))
    lines = console.export_text().splitlines()
    assert "1/1 +1 lost" in lines[1] and "1/1" in lines[2], lines
