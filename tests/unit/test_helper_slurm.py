"""How the helper reads the end of a SLURM job: its wrapper's exit record first, then what squeue
said of the job, but only a reading taken after the run started or ended. Real run directories
on disk; the squeue reading is set as the helper would have parsed it (no command runs: the
poll is marked as just done, and requeued jobs as already cancelled)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dispatcher.remote.helper import Helper

JOB = "5_0"


def run_dir(tmp_path: Path, *, started: bool, exit_info: dict[str, object] | None = None,
            cancelled_by_us: bool = False) -> Helper:  # fmt: skip
    helper = Helper(str(tmp_path))
    d = Path(helper.run_dir("r1"))
    d.mkdir(parents=True)
    (d / "supervisor.json").write_text(json.dumps({"slurm": "labtasker-x", "index": 0}))
    Path(helper.slurm.dir).mkdir(exist_ok=True)
    (Path(helper.slurm.dir) / "labtasker-x.job").write_text(JOB.split("_")[0])
    if started:
        info = {"slurm_job": JOB, "pid": 42, "started_at": "2026-12-03T10:00:00Z"}
        (d / "started.json").write_text(json.dumps(info))
    if exit_info is not None:
        (d / "exit.json").write_text(json.dumps(exit_info))
    if cancelled_by_us:
        (d / "cancel.json").write_text(json.dumps({"grace": 1}))
    return helper


def squeue_says(helper: Helper, state: str, *, at: float | None = None) -> None:
    helper.slurm.jobs = {JOB: (state, "None", "labtasker-x")} if state else {}
    helper.slurm.polled = time.time() + 5 if at is None else at
    helper.slurm.tried = time.monotonic()  # no squeue now
    helper.slurm.requeued[JOB] = None  # cancelled already: no scancel runs here


@pytest.mark.parametrize("state", ["NODE_FAIL", "BOOT_FAIL", "PREEMPTED"])
def test_a_job_taken_from_its_node_is_lost(tmp_path: Path, state: str) -> None:
    helper = run_dir(tmp_path, started=True)
    squeue_says(helper, state)
    rep = helper.report("r1", [1 << 20])
    assert rep["state"] == "lost" and state.replace("PREEMPTED", "preempted") in rep["error"]
    assert rep["job_id"] == JOB


@pytest.mark.parametrize(
    ("state", "why"),
    [("OUT_OF_MEMORY", "killed by SLURM: out of memory"),
     ("TIMEOUT", "killed by SLURM at its time limit"),
     ("CANCELLED", "cancelled outside labtasker (scancel)")],
)  # fmt: skip
def test_a_job_slurm_killed_before_its_wrapper_could_record_fails_with_why(
    tmp_path: Path, state: str, why: str
) -> None:
    helper = run_dir(tmp_path, started=True)
    squeue_says(helper, state)
    rep = helper.report("r1", [1 << 20])
    assert rep["state"] == "exited" and rep["error"].startswith(why), rep
    assert not rep["cancelled"] and rep["timed_out"] == (state == "TIMEOUT")
    # Recorded: once squeue forgets the job, the outcome stays.
    squeue_says(helper, "")
    assert helper.report("r1", [1 << 20])["error"] == rep["error"]


def test_a_cancel_of_ours_reads_as_cancelled(tmp_path: Path) -> None:
    helper = run_dir(tmp_path, started=False, cancelled_by_us=True)
    squeue_says(helper, "CANCELLED")
    rep = helper.report("r1", [1 << 20])
    assert rep["state"] == "exited" and rep["cancelled"] and rep["error"] is None


TERMINATED = {"exit_code": -15, "signal": "SIGTERM", "cancelled": True, "terminated": True,
              "timed_out": False, "error": None}  # fmt: skip


@pytest.mark.parametrize(
    ("state", "expect", "why"),
    [("CANCELLED", "exited", "cancelled outside labtasker (scancel)"),
     ("TIMEOUT", "exited", "killed by SLURM at its time limit"),
     ("PENDING", "lost", "SLURM job 5_0 was requeued"),
     ("COMPLETING", "running", None)],
)  # fmt: skip
def test_a_wrapper_that_got_sigterm_is_judged_by_what_slurm_says(
    tmp_path: Path, state: str, expect: str, why: str | None
) -> None:
    helper = run_dir(tmp_path, started=True, exit_info=dict(TERMINATED))
    squeue_says(helper, state)
    rep = helper.report("r1", [1 << 20])
    assert rep["state"] == expect, rep
    if expect == "exited":
        assert not rep["cancelled"] and rep["error"].startswith(why), rep
    elif why:
        assert rep["error"] == why


def test_a_squeue_reading_older_than_the_start_is_not_a_requeue(tmp_path: Path) -> None:
    helper = run_dir(tmp_path, started=True)
    started = os.stat(helper.run_dir("r1") + "/started.json").st_mtime
    squeue_says(helper, "PENDING", at=started - 10)  # polled while it still waited
    assert helper.report("r1", [1 << 20])["state"] == "running"
    squeue_says(helper, "PENDING")  # polled after it started: SLURM requeued it
    assert helper.report("r1", [1 << 20])["state"] == "lost"


def test_a_job_gone_from_squeue_for_two_polls_without_a_record_is_lost(tmp_path: Path) -> None:
    # Also a job this helper never saw listed (started by an earlier one, ended meanwhile).
    helper = run_dir(tmp_path, started=True)
    squeue_says(helper, "")
    assert helper.report("r1", [1 << 20])["state"] == "running"  # one poll: maybe just ended
    assert helper.report("r1", [1 << 20])["state"] == "running"  # the same poll again
    squeue_says(helper, "", at=helper.slurm.polled + 30)
    rep = helper.report("r1", [1 << 20])
    assert rep["state"] == "lost" and "gone from squeue" in rep["error"]


def test_old_array_files_go_and_live_ones_stay(tmp_path: Path) -> None:
    helper = Helper(str(tmp_path))
    folder = Path(helper.slurm.dir)
    folder.mkdir()
    (folder / "labtasker-old.job").write_text("8")
    os.utime(folder / "labtasker-old.job", (time.time() - 8 * 86400,) * 2)
    week = time.time() - 8 * 86400
    for name in ("labtasker-old", "labtasker-live", "labtasker-new"):
        for suffix in (".sh", ".json", "_0.out"):
            (folder / f"{name}{suffix}").write_text("x")
            if name != "labtasker-new":
                os.utime(folder / f"{name}{suffix}", (week, week))
    helper.slurm.jobs = {"9_0": ("RUNNING", "None", "labtasker-live")}
    helper.slurm.prune()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{n}{s}" for n in ("labtasker-live", "labtasker-new") for s in (".sh", ".json", "_0.out")
    )


def test_squeue_runs_once_a_poll_and_never_twice_within_five_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A squeue on PATH that logs each call (a real program: the helper runs it as it would run
    # SLURM's), listing nothing.
    calls = tmp_path / "calls"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "squeue").write_text(f"#!/bin/sh\necho call >> {calls}\n")
    (shim / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    helper = Helper(str(tmp_path / "state"))
    helper.slurm.poll = 30.0
    for _ in range(20):  # every report of every watched run asks for a fresh reading
        helper.slurm.refresh()
        helper.slurm.refresh(force=True)  # why did SLURM end a job: sooner, not within 5 s
    assert calls.read_text().count("call") == 1
    helper.slurm.tried -= 5.0  # 5 s later: a forced look may run, a regular poll may not
    helper.slurm.refresh()
    assert calls.read_text().count("call") == 1
    helper.slurm.refresh(force=True)
    assert calls.read_text().count("call") == 2
    helper.slurm.tried -= 30.0  # a poll interval later
    helper.slurm.refresh()
    assert calls.read_text().count("call") == 3
