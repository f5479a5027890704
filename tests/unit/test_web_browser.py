"""``labtasker ui`` in a real headless Chromium (Selenium, tests/web_ui.py): every page renders
without a console error, a state change made by ``dispatch`` shows within 2 s, the results plot
has one point per finished task at its values, cancel from the page cancels the task, a running
task's log is read from its host, tasks packed on one GPU stack in its timeline lane, and the GPU
panel tells our GPUs from another user's and free ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dispatcher.cli import _register, app
from dispatcher.core.models import TaskState
from dispatcher.store.queue import Store
from tests.loop_lab import DEADLINE, REPO, LocalLab
from tests.web_ui import UiServer, chromium_driver, console_errors, ui_server

_register()
#: How soon the issue says a change made by dispatch must show on the page, in seconds.
LIVE_BOUND = 2.0
#: Each finished task's result: acc = 10 * lr + seed.
RESULT_CMD = (
    'python3 -c \'import json, os, sys; json.dump({"acc": 10 * float(sys.argv[1]) +'
    ' int(sys.argv[2])}, open(os.environ["LABTASKER_RESULT"], "w"))\' %{lr} %{seed}'
)


@pytest.fixture
def driver() -> Iterator[Any]:
    with chromium_driver() as d:
        yield d


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LocalLab]:
    lab = LocalLab(tmp_path / "lab", {"a": 2})
    yield lab
    await lab.close()


def wait_until(check: Callable[[], object], what: str, timeout: float = DEADLINE) -> Any:
    end = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)
    return value


def text_of(driver: Any, css: str) -> str | None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("css selector", css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def add(lab: LocalLab, *args: str) -> list[int]:
    argv = ["--db", str(lab.db), "queue", "add", "--json", "--gpus", "0", *args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    return list(out["ids"] if isinstance(out, dict) else out)


def visit(driver: Any, ui: UiServer, page: str, ready_css: str) -> None:
    driver.get(f"{ui.url}#{page}")
    wait_until(lambda: text_of(driver, ready_css) is not None, f"page {page} shows {ready_css}")


async def test_every_page_renders_without_console_errors(lab: LocalLab, driver: Any) -> None:
    ids = add(lab, "--grid", "lr=0.1,0.01", "--grid", "seed=1,2", "--cmd", RESULT_CMD)
    failing = add(lab, "--cmd", "echo oops; exit 3")
    code, lines = await lab.dispatch()
    assert code == 1, lines  # one task failed
    add(lab, "--cmd", "echo later")  # one pending
    with ui_server(lab.db, "--hosts", str(lab.hosts_path)) as ui:
        visit(driver, ui, "overview", "#count-succeeded")
        wait_until(lambda: text_of(driver, "#count-succeeded") == "4", "4 succeeded shown")
        assert text_of(driver, "#count-failed") == "1"
        visit(driver, ui, "timeline", "#timeline svg rect.tbar")
        bars = driver.find_elements("css selector", "#timeline rect.tbar")
        assert len(bars) == 5  # one per attempt
        visit(driver, ui, "queue", "#queue tr[data-task]")
        assert len(driver.find_elements("css selector", "#queue tr[data-task]")) == 6
        visit(driver, ui, f"task/{failing[0]}", "#attempts")
        wait_until(lambda: "oops" in (text_of(driver, "#log") or ""), "the task's log shown")
        visit(driver, ui, f"task/{ids[0]}", "#attempts")
        visit(driver, ui, "results", "#plot svg")
        visit(driver, ui, "results", "#parallel svg polyline")
        assert console_errors(driver) == []


async def test_the_plot_shows_one_point_per_finished_task_at_its_values(
    lab: LocalLab, driver: Any
) -> None:
    ids = add(lab, "--grid", "lr=0.1,0.01,0.001", "--grid", "seed=1,2", "--cmd", RESULT_CMD)
    code, lines = await lab.dispatch()
    assert code == 0, lines
    with ui_server(lab.db) as ui:
        visit(driver, ui, "results", "#plot svg circle.pt")
        points = driver.find_elements("css selector", "#plot circle.pt")
        seen = sorted(
            (int(p.get_attribute("data-task")), float(p.get_attribute("data-x")),
             float(p.get_attribute("data-y")))
            for p in points
        )  # fmt: skip
    tasks = Store(lab.db).tasks()
    want = sorted((t.id, t.args["lr"], 10 * t.args["lr"] + t.args["seed"]) for t in tasks)
    assert [t for t, _, _ in seen] == sorted(ids)
    assert seen == pytest.approx(want)
    assert console_errors(driver) == []


async def test_a_state_change_made_by_dispatch_shows_within_two_seconds(
    lab: LocalLab, driver: Any
) -> None:
    gate = lab.root / "gate"
    (task,) = lab.add(1, gate=gate)
    with ui_server(lab.db, "--hosts", str(lab.hosts_path)) as ui:
        visit(driver, ui, "overview", "#count-pending")
        wait_until(lambda: text_of(driver, "#count-pending") == "1", "1 pending shown")
        lab.dispatch_cli()
        store = Store(lab.db, lock_timeout=30)
        for state in ("running", "succeeded"):

            def in_queue(s: str = state) -> bool:
                return store.get(task).state == s

            def on_page(s: str = state) -> bool:
                return text_of(driver, f"#count-{s}") == "1"

            wait_until(in_queue, f"the task {state}")
            # From the moment the test saw the queue change, within the bound:
            wait_until(on_page, f"{state} shown", timeout=LIVE_BOUND)
            gate.touch()
        assert console_errors(driver) == []


def test_cancel_from_the_queue_page_cancels_the_task(tmp_path: Path, driver: Any) -> None:
    db = tmp_path / "q.duckdb"
    argv = ["--db", str(db), "queue", "add", "--gpus", "0", "--grid", "i=1,2,3"]
    assert CliRunner().invoke(app, [*argv, "--cmd", "echo %{i}"]).exit_code == 0
    with ui_server(db) as ui:
        visit(driver, ui, "queue", "button.cancel[data-task='2']")
        driver.find_element("css selector", "button.cancel[data-task='2']").click()
        store = Store(db)
        wait_until(lambda: store.get(2).state == "cancelled", "task 2 cancelled")
        assert [t.state for t in store.tasks()] == ["pending", "cancelled", "pending"]
        wait_until(lambda: text_of(driver, "#queue tr[data-task='2'] td.state") == "cancelled",
                   "the table shows it")  # fmt: skip
        assert console_errors(driver) == []


async def test_a_running_tasks_log_is_read_live_from_its_host(lab: LocalLab, driver: Any) -> None:
    gate = lab.root / "gate"
    (task,) = add(lab, "--cmd", f"echo first-line; while [ ! -e {gate} ]; do sleep 0.05; done")
    lab.dispatch_cli()
    store = Store(lab.db, lock_timeout=30)
    wait_until(lambda: store.get(task).state == "running", "the task runs")
    with ui_server(lab.db, "--hosts", str(lab.hosts_path)) as ui:
        visit(driver, ui, f"task/{task}", "#log")
        wait_until(lambda: "first-line" in (text_of(driver, "#log") or ""), "its output so far")
        assert store.get(task).state == "running"  # read from the host, not from a copy
        gate.touch()
        wait_until(lambda: store.get(task).state == "succeeded", "the task ends")
        assert console_errors(driver) == []


def test_tasks_packed_on_one_gpu_stack_in_its_timeline_lane(tmp_path: Path, driver: Any) -> None:
    db = tmp_path / "q.duckdb"
    argv = ["--db", str(db), "queue", "add", "--gpus", "1", "--grid", "i=1,2,3"]
    assert CliRunner().invoke(app, [*argv, "--cmd", "echo %{i}"]).exit_code == 0
    with Store(db).transaction() as tx:  # as dispatch records a placement: 1 and 2 share GPU 0
        for task, gpu in ((1, 0), (2, 0), (3, 1)):
            tx.move(task, TaskState.LAUNCHING, host="h", run_id=f"r{task}", gpu_ids=[gpu])
            tx.move(task, TaskState.RUNNING, run_id=f"r{task}")
    with ui_server(db) as ui:
        visit(driver, ui, "timeline", "#timeline rect.tbar")
        bars = {
            int(b.get_attribute("data-task")): float(b.get_attribute("y"))
            for b in driver.find_elements("css selector", "#timeline rect.tbar")
        }
        labels = [t.text for t in driver.find_elements("css selector", "#timeline svg > text")]
        assert console_errors(driver) == []
    assert labels == ["h gpu 0", "h gpu 1"]
    assert len({bars[1], bars[2]}) == 2  # two rows in lane gpu 0
    assert bars[3] > max(bars[1], bars[2])  # lane gpu 1 below it


async def test_the_gpu_panel_shows_ours_another_users_and_free(
    lab: LocalLab, driver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = lab.root / "bin"
    stub.mkdir()
    shutil.copy(REPO / "tests" / "fake_bin" / "nvidia-smi", stub / "nvidia-smi")
    rows = [f"{i}, GPU-{i}-web, NVIDIA Test GPU, {8000 * (i == 1)}, 40960, 0" for i in range(3)]
    (stub / "gpus.csv").write_text("\n".join(rows) + "\n")
    other = subprocess.Popen(["sleep", "300"])  # another user's job, as the driver lists it
    try:
        (stub / "apps.csv").write_text(f"GPU-1-web, {other.pid}, 8000, python\n")
        monkeypatch.setenv("PATH", f"{stub}{os.pathsep}{os.environ['PATH']}")
        lab.write_hosts({"a": {"gpus": "auto"}})
        gate = lab.root / "gate"
        (task,) = add(lab, "--gpus", "1", "--cmd", f"while [ ! -e {gate} ]; do sleep 0.05; done")
        lab.dispatch_cli()
        store = Store(lab.db, lock_timeout=30)
        wait_until(lambda: store.get(task).state == "running", "the task runs")
        (ours,) = store.get(task).gpu_ids or []
        with ui_server(lab.db, "--hosts", str(lab.hosts_path)) as ui:
            visit(driver, ui, "overview", "#count-running")

            def gpu(i: int) -> str:
                return text_of(driver, f".gpu[data-host='a'][data-gpu='{i}']") or ""

            wait_until(lambda: f"task {task}" in gpu(ours), "our GPU named with its task")
            assert ours != 1  # the busy one is left alone
            assert f"pid {other.pid}" in gpu(1) and "7.8/40.0 GiB" in gpu(1)
            (idle,) = {0, 2} - {ours}
            assert gpu(idle).endswith("free")
            assert console_errors(driver) == []
            gate.touch()
            wait_until(lambda: store.get(task).state == "succeeded", "the task ends")
    finally:
        other.kill()
        other.wait()
