"""Reused run dirs (the helper's Spares): an ended run's dir serves a later run, never its files."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest

from dispatcher.remote import helper as helper_module
from tests.helper_harness import LocalHelper, gate_command


def spares(state: Path) -> list[str]:
    return sorted(os.listdir(state / "spare"))


async def test_a_new_run_reuses_an_ended_runs_dir_but_none_of_its_files(
    helper: LocalHelper, tmp_path: Path
) -> None:
    old = 'echo old; echo \'{"x": 1}\' > "$LABTASKER_RESULT"; touch "$LABTASKER_RUN_DIR/extra"'
    await helper.launch("a", old)
    old_pid = (await helper.wait_exit("a"))["pid"]
    assert (await helper.call("cleanup", runs=["a"]))["removed"] == 1
    state = helper.state_dir
    assert not (state / "runs" / "a").exists() and len(spares(state)) == 1
    kept = state / "spare" / spares(state)[0]
    # Reset when kept: no log or result takes disk space in a spare.
    assert sorted(os.listdir(kept)) == ["exit.reserve", "started.json.tmp", "supervisor.json"]
    inode = kept.stat().st_ino

    await helper.launch("b", gate_command(tmp_path / "gate", "echo new"))
    run = state / "runs" / "b"
    assert run.stat().st_ino == inode and spares(state) == []
    assert (await helper.probe("b"))["state"] in ("starting", "running")
    assert not (run / "exit.json").exists() and not (run / "result.json").exists()
    assert not (run / "extra").exists()
    (tmp_path / "gate").touch()
    rep = await helper.wait_exit("b")
    assert rep["exit_code"] == 0 and rep["result"] is None and rep["result_error"] is None
    assert base64.b64decode(rep["log"]) == b"ready\nnew\n"
    assert rep["pid"] != old_pid  # started.json is b's own


async def test_a_run_that_exists_is_not_launched_again_and_keeps_the_spares(
    helper: LocalHelper,
) -> None:
    await helper.launch("a", "true")
    await helper.launch("c", "echo c")
    await helper.wait_exit("a")
    await helper.wait_exit("c")
    await helper.call("cleanup", runs=["a"])
    again = await helper.launch("c", "echo twice")
    assert again["status"] == "exists" and again["run"]["state"] == "exited"
    assert base64.b64decode(again["run"]["log"]) == b"c\n"
    assert len(spares(helper.state_dir)) == 1


async def test_a_run_dir_holding_a_directory_is_removed_not_kept(helper: LocalHelper) -> None:
    await helper.launch("a", 'mkdir "$LABTASKER_RUN_DIR/sub"; touch "$LABTASKER_RUN_DIR/sub/f"')
    await helper.wait_exit("a")
    assert (await helper.call("cleanup", runs=["a"]))["removed"] == 1
    assert spares(helper.state_dir) == [] and not (helper.state_dir / "runs" / "a").exists()
    # A spare that gained one after it was kept is not reused either.
    await helper.launch("c", "true")
    await helper.wait_exit("c")
    await helper.call("cleanup", runs=["c"])
    kept = helper.state_dir / "spare" / spares(helper.state_dir)[0]
    (kept / "sub").mkdir()
    await helper.launch("b", "echo b")
    rep = await helper.wait_exit("b")
    assert rep["exit_code"] == 0 and base64.b64decode(rep["log"]) == b"b\n"
    assert not kept.exists() and spares(helper.state_dir) == []
    assert sorted(os.listdir(helper.state_dir / "runs" / "b")) == [
        "exit.json",
        "output.log",
        "started.json",
        "supervisor.json",
    ]


def test_spares_are_capped_and_leftovers_of_a_crashed_launch_are_removed(tmp_path: Path) -> None:
    spare = tmp_path / "spare"
    for n in range(helper_module.SPARE_MAX + 3):
        (spare / f"old-{n}").mkdir(parents=True)
    # Claimed (renamed to NAME.TIME.new) by helpers that died publishing, or are at it now.
    now = int(time.time())
    stale, fresh = spare / f"h-1-1.{now - 120}.new", spare / f"h-1-2.{now}.new"
    stale.mkdir()
    fresh.mkdir()
    spares_ = helper_module.Spares(str(tmp_path), "host")
    run = tmp_path / "runs" / "r"
    run.parent.mkdir()
    assert spares_.publish(str(run), b"{}")  # lists spare/ first
    assert not stale.exists() and fresh.exists()
    left = [n for n in os.listdir(spare) if not n.endswith(".new")]
    assert len(left) == helper_module.SPARE_MAX - 1  # the cap, less the one published
    assert sorted(os.listdir(run)) == ["exit.reserve", "supervisor.json"]  # made where lacking
    assert spares_.recycle(str(run))
    other = tmp_path / "runs" / "s"
    other.mkdir()
    assert not spares_.recycle(str(other)) and other.is_dir()  # full: left for removal


def test_publishing_onto_an_existing_run_fails_and_loses_no_spare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spares_ = helper_module.Spares(str(tmp_path), "host")
    (tmp_path / "runs").mkdir()
    first = tmp_path / "runs" / "a"
    assert spares_.publish(str(first), b"{}")
    assert sorted(os.listdir(first)) == [
        "exit.reserve",
        "supervisor.json",
    ]  # never empty: rename() cannot replace it
    assert not spares_.publish(str(first), b"{}")
    done = tmp_path / "runs" / "done"
    assert spares_.publish(str(done), b"{}") and spares_.recycle(str(done))
    # Another helper made it between the look and the rename: rename() itself refuses.
    monkeypatch.setattr(os.path, "lexists", lambda path: False)
    assert not spares_.publish(str(first), b"{}")
    assert sorted(os.listdir(first)) == ["exit.reserve", "supervisor.json"]
    assert len(os.listdir(tmp_path / "spare")) == 1  # the claimed spare went back
    assert spares_.publish(str(tmp_path / "runs" / "b"), b"{}")  # ... and serves the next run
    assert os.listdir(tmp_path / "spare") == []


def test_one_failing_run_of_a_launches_batch_fails_alone(tmp_path: Path) -> None:
    h = helper_module.Helper(str(tmp_path))

    def launch(run_id: str, spec: Any) -> dict[str, Any]:
        if run_id == "b":
            raise OSError(28, "No space left on device")
        return {"status": "started", "pid": 1}

    h.launch = launch  # type: ignore[method-assign,assignment]
    runs: list[dict[str, Any]] = [{"run_id": r, "spec": {}} for r in ("a", "b", "c")]
    got = h.op_launches({"runs": runs})["runs"]
    assert got["a"] == got["c"] == {"status": "started", "pid": 1}
    assert got["b"] == {"status": "error", "error": "OSError: [Errno 28] No space left on device"}


async def test_a_spec_with_nul_is_refused_before_anything_starts(helper: LocalHelper) -> None:
    runs = [
        {"run_id": "ok", "spec": {"command": "true"}},
        {"run_id": "bad", "spec": {"command": "true", "workdir": "a\0b"}},
    ]
    got = (await helper.call("launches", runs=runs))["runs"]
    assert got["ok"]["status"] == "started"
    assert got["bad"] == {
        "status": "error",
        "error": "spec.workdir must not contain NUL",
        "snapshot_missing": False,  # (a missing snapshot would be sent again and relaunched)
        "withdrawn": False,  # (a SLURM run submitted ahead would go back to pending)
    }
    assert not (helper.state_dir / "runs" / "bad").exists()
    assert (await helper.wait_exit("ok"))["exit_code"] == 0
