"""A run id starts at most once: helpers fenced by generation, keepers that end, supervisor.json.

A stale launch (a stalled session's bytes delivered after a newer helper of the same queue took
over) starts nothing; a keeper with nothing left to do exits once its helper is gone; a launch cut
short before its start was recorded is lost as soon as its keeper is gone, not a minute later.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.helper_harness import LocalHelper, eventually, gate_command, pid_running


def keeper_of(h: LocalHelper, run_id: str) -> int:
    info = json.loads(h.run_file(run_id, "supervisor.json").read_text())
    pid: int = info["supervisor_pid"]
    return pid


async def test_a_superseded_helper_starts_nothing_and_exits(tmp_path: Path) -> None:
    state = tmp_path / "state"
    marker = tmp_path / "ran"
    old = LocalHelper(state, fence="q1-gpu")
    await old.start()
    assert old.client is not None and old.client.hello["generation"] == 1
    try:
        async with LocalHelper(state, fence="q1-gpu") as new:
            assert new.client is not None and new.client.hello["generation"] == 2
            # The old session's launches arrive late: refused, whatever the run ids.
            late = [{"run_id": f"r-{i}", "spec": {"command": f"touch {marker}"}} for i in (1, 2)]
            reply = await old.call("launches", runs=late)
            for i in (1, 2):
                assert reply["runs"][f"r-{i}"]["status"] == "error", reply
                assert "superseded" in reply["runs"][f"r-{i}"]["error"]
                assert not (state / "runs" / f"r-{i}").exists()
            assert not marker.exists()
            # ... and the old helper leaves: its controller has moved on.
            assert old.proc is not None
            await eventually(lambda: _done(old), what="the superseded helper exits")
            # The newest helper launches as before.
            await new.launch("r-new", "true")
            assert (await new.wait_exit("r-new"))["exit_code"] == 0
    finally:
        await old.stop()


async def _done(h: LocalHelper) -> bool:
    assert h.proc is not None
    return h.proc.returncode is not None or not pid_running(h.proc.pid)


async def test_fences_are_per_key_and_an_unfenced_helper_fences_nobody(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with (
        LocalHelper(state, fence="q1-a") as a,
        LocalHelper(state, fence="q1-b") as b,
        LocalHelper(state) as check,  # `hosts check`, `logs --follow`: no key
    ):
        assert check.client is not None and check.client.hello["generation"] is None
        for h, run in ((a, "ra"), (b, "rb")):
            await h.launch(run, "true")
            assert (await h.wait_exit(run))["exit_code"] == 0


async def test_a_keeper_exits_once_its_helper_is_gone_and_its_last_run_is_recorded(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    h = LocalHelper(tmp_path / "state", fence="q1-x")
    await h.start()
    await h.launch("r1", gate_command(gate))
    await h.wait_state("r1", "running")
    keeper = h.started("r1")["supervisor_pid"]
    await h.stop()  # the controller's connection drops while the task runs
    assert pid_running(keeper)  # it still has a run to watch
    gate.touch()
    await eventually(lambda: _exists(h.run_file("r1", "exit.json")), what="r1's exit recorded")

    async def keeper_gone() -> bool:
        return not pid_running(keeper)

    await eventually(keeper_gone, what="the keeper exits after its last run")


async def _exists(path: Path) -> bool:
    return path.exists()


async def test_a_launch_cut_before_its_start_was_recorded_is_lost_at_once(
    tmp_path: Path,
) -> None:
    """The crash falls between publishing the run dir and started.json: supervisor.json names
    the keeper, so the first probe after it is gone says lost (not "starting" for 60 s)."""
    gate = tmp_path / "gate"
    async with LocalHelper(tmp_path / "state", fence="q1-y") as h:
        await h.launch("first", gate_command(gate))
        await h.wait_state("first", "running")
        keeper = h.started("first")["supervisor_pid"]
        os.kill(keeper, signal.SIGSTOP)  # it will never get to start the next one
        try:
            await h.launch("cut", "true")
            assert keeper_of(h, "cut") == keeper
            assert not h.run_file("cut", "started.json").exists()
            assert (await h.probe("cut"))["state"] == "starting"  # its keeper lives
        finally:
            os.kill(keeper, signal.SIGKILL)  # the crash
            os.killpg(h.started("first")["pgid"], signal.SIGKILL)
        # Within the harness's deadline (15 s), well before the 60 s a bare run dir gets.
        lost = await h.wait_state("cut", "lost")
        assert f"pid {keeper}" in lost["error"]
