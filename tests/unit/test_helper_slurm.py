"""How the helper reads the end of a SLURM job: its wrapper's exit record first, then what squeue
said of the job, but only a reading taken after the run started or ended. Real run directories
on disk; the squeue reading is set as the helper would have parsed it (no command runs: the
poll is marked as just done, and requeued jobs as already cancelled)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from dispatcher.core.models import Task, TaskState
from dispatcher.core.outcome import outcome_of
from dispatcher.remote import wire
from dispatcher.remote.helper import (
    RESULT_DEPTH,
    RESULT_LIMIT,
    BadRequest,
    Helper,
    _slurm_spec,
    gate_held,
    run_outcome,
    withdraw,
)

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


def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: str, **bodies: str) -> Path:
    """Programs named as ``bodies`` (their shell text) first on PATH; each call of ``logged``
    writes its arguments as a line of the file returned."""
    calls, shim = tmp_path / "calls", tmp_path / "bin"
    shim.mkdir()
    for name, body in bodies.items():
        log = f"printf '%s\\n' \"$*\" >> {calls}\n" if name == logged else ""
        (shim / name).write_text(f"#!/bin/sh\n{log}{body}\n")
        (shim / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    return calls


def test_squeue_runs_once_a_poll_and_never_twice_within_five_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A squeue on PATH that logs each call (a real program: the helper runs it as it would run
    # SLURM's), listing nothing.
    calls = on_path(tmp_path, monkeypatch, logged="squeue", squeue="")
    helper = Helper(str(tmp_path / "state"))
    helper.slurm.poll = 30.0
    for _ in range(20):  # every report of every watched run asks for a fresh reading
        helper.slurm.refresh()
        helper.slurm.refresh(force=True)  # why did SLURM end a job: sooner, not within 5 s
    assert calls.read_text().count("\n") == 1
    helper.slurm.tried -= 5.0  # 5 s later: a forced look may run, a regular poll may not
    helper.slurm.refresh()
    assert calls.read_text().count("\n") == 1
    helper.slurm.refresh(force=True)
    assert calls.read_text().count("\n") == 2
    helper.slurm.tried -= 30.0  # a poll interval later
    helper.slurm.refresh()
    assert calls.read_text().count("\n") == 3


def slurm_shims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sacct: str) -> Path:
    """squeue (listing nothing) and sacct (``sacct``: its shell body) on PATH, each call of
    sacct logged to the file returned."""
    return on_path(tmp_path, monkeypatch, logged="sacct", squeue="", sacct=sacct)


def next_poll(helper: Helper) -> dict[str, Any]:
    helper.slurm.tried -= 60.0  # a poll interval later
    return helper.report("r1", [1 << 20])


@pytest.mark.parametrize(
    ("said", "state", "why"),
    [("OUT_OF_MEMORY", "exited", "killed by SLURM: out of memory (its --mem limit)"),
     ("NODE_FAIL", "lost", "SLURM job 5_0 ended as NODE_FAIL"),
     ("CANCELLED by 1000", "exited", "cancelled outside labtasker (scancel) (SLURM job 5_0)")],
)  # fmt: skip
def test_a_job_squeue_forgot_is_read_from_sacct_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str, state: str, why: str
) -> None:
    # It ended while no controller ran, without an exit record, and squeue has forgotten it
    # (MinJobAge): one sacct for the jobs squeue no longer lists says how it ended.
    calls = slurm_shims(tmp_path, monkeypatch, f"echo '{JOB}|{said}'")
    helper = run_dir(tmp_path, started=True)
    helper.slurm.requeued[JOB] = None  # no scancel runs here
    assert next_poll(helper)["state"] == "running"  # not listed once: not decided yet
    assert not calls.exists()  # sacct is asked about jobs squeue did not list before
    rep = next_poll(helper)
    assert (rep["state"], rep["error"][: len(why)]) == (state, why), rep
    assert calls.read_text().split("\n")[0].split()[-1] == JOB  # one sacct, for that job
    next_poll(helper)
    assert calls.read_text().count("\n") == 1  # its answer is kept: never asked twice


@pytest.mark.parametrize("sacct", ["echo 'accounting storage is disabled' >&2; exit 1",
                                   f"echo '{JOB}|RUNNING'", "true"])  # fmt: skip
def test_without_an_answer_from_sacct_a_job_gone_from_squeue_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sacct: str
) -> None:
    calls = slurm_shims(tmp_path, monkeypatch, sacct)
    helper = run_dir(tmp_path, started=True)
    next_poll(helper)
    rep = next_poll(helper)
    assert rep["state"] == "lost" and "gone from squeue" in rep["error"], rep
    next_poll(helper)  # asked once about a job (a cluster without accounting: never again)
    assert calls.read_text().count("\n") == 1


# -- runs submitted ahead of their dependencies: the wrapper's check of labtasker's rule ---------


def ended_run(helper: Helper, run_id: str, exit_info: dict[str, Any] | None,
              result: str | None = None, *, slurm: bool = False) -> Path:  # fmt: skip
    d = Path(helper.run_dir(run_id))
    d.mkdir(parents=True)
    sup: dict[str, Any] = {"slurm": "labtasker-x", "index": 0} if slurm else {}
    (d / "supervisor.json").write_text(json.dumps(sup))
    if exit_info is not None:
        (d / "exit.json").write_text(json.dumps(exit_info))
    if exit_info is not None and exit_info.get("cancelled"):  # a cancel of ours
        (d / "cancel.json").write_text(json.dumps({"grace": 1}))
    if result is not None:
        (d / "result.json").write_text(result)
    return d


def nested(levels: int) -> str:
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


ENDED = {"exit_code": 0, "signal": None, "timed_out": False, "cancelled": False, "error": None,
         "started_at": "2026-12-03T10:00:00Z", "finished_at": "2026-12-03T10:01:00Z"}  # fmt: skip
OUTCOMES = [
    pytest.param(ENDED, None, "succeeded", id="exit 0"),
    pytest.param(ENDED, '{"loss": 0.5}', "succeeded", id="exit 0 with a result"),
    pytest.param(ENDED, nested(RESULT_DEPTH), "succeeded", id="result at the depth limit"),
    pytest.param(ENDED, "not json", "succeeded", id="unreadable result: noted, not failed"),
    pytest.param(ENDED, "[1, 2]", "succeeded", id="result not an object: noted, not failed"),
    pytest.param({**ENDED, "exit_code": 3}, None, "failed", id="exit 3"),
    pytest.param({**ENDED, "exit_code": -15, "timed_out": True}, None, "failed", id="timed out"),
    pytest.param({**ENDED, "exit_code": 0, "timed_out": True}, None, "failed", id="timed out 0"),
    pytest.param({**ENDED, "exit_code": -15, "cancelled": True}, None, "cancelled", id="cancelled"),
    pytest.param(
        {**ENDED, "exit_code": 0, "cancelled": True},
        None,
        "cancelled",
        id="cancelled wins over exit 0",
    ),
    pytest.param({**ENDED, "error": "the disk is full"}, None, "failed", id="error set"),
    pytest.param(
        {**ENDED, "exit_code": None, "error": "no workdir"}, None, "failed", id="never started"
    ),
    pytest.param(ENDED, nested(RESULT_DEPTH + 1), "failed", id="result too deep"),
    pytest.param(ENDED, '{"x": "' + "y" * RESULT_LIMIT + '"}', "failed", id="result too big"),
]


@pytest.mark.parametrize(("exit_info", "result", "expect"), OUTCOMES)
def test_a_runs_outcome_is_what_the_controller_makes_of_its_report(
    tmp_path: Path, exit_info: dict[str, Any], result: str | None, expect: str
) -> None:
    helper = Helper(str(tmp_path))
    ended_run(helper, "t1-a1-x", exit_info, result)
    assert run_outcome(helper.run_dir("t1-a1-x")) == expect
    # The twin it mirrors: the helper's report, the controller's checks, outcome_of.
    got = wire.check_report("h", helper.report("t1-a1-x", [1 << 22]), ("t1-a1-x",), "x")
    task = Task(1, TaskState.RUNNING, {}, "t", "t", host="h", attempt=1, max_attempts=1)
    assert outcome_of(got, task).state.value == expect


def test_a_withdrawn_or_missing_record_has_no_outcome(tmp_path: Path) -> None:
    helper = Helper(str(tmp_path))
    d = ended_run(helper, "r1", None)
    assert run_outcome(str(d)) is None  # no exit.json
    assert run_outcome(helper.run_dir("nothing-here")) is None
    withdraw(str(d), "task 1 failed")
    assert run_outcome(str(d)) is None
    (d / "exit.json").write_text("{broken")
    assert run_outcome(str(d)) is None


def test_the_helpers_result_depth_is_the_controllers() -> None:
    assert RESULT_DEPTH == wire.MAX_RESULT_DEPTH


def gate(kind: str, last: bool = True, run: str = "t1-a1-x") -> list[dict[str, Any]]:
    return [{"kind": kind, "task": 1, "run": run, "last": last}]


FAILED = {**ENDED, "exit_code": 3}
CANCELLED = {**ENDED, "exit_code": -15, "cancelled": True}
RETRIED = "run t1-a1-x of task 1 failed and will be retried"
NO_OUTCOME = "run t1-a1-x of task 1 ended without an outcome"


@pytest.mark.parametrize(
    ("kind", "exit_info", "last", "held"),
    [("after", ENDED, True, None),
     ("after", FAILED, True, "task 1 failed"),
     ("after", FAILED, False, RETRIED),
     ("after", CANCELLED, True, "task 1 cancelled"),
     ("after", None, True, NO_OUTCOME),
     ("after_any", ENDED, False, None),
     ("after_any", FAILED, True, None),
     ("after_any", FAILED, False, RETRIED),
     ("after_any", CANCELLED, False, None),
     ("after_any", None, True, NO_OUTCOME),
     ("after_failed", ENDED, True, "task 1 succeeded"),
     ("after_failed", FAILED, True, None),
     ("after_failed", FAILED, False, RETRIED),
     ("after_failed", CANCELLED, True, None),
     ("after_failed", None, False, NO_OUTCOME)],
)  # fmt: skip
def test_a_gate_holds_the_run_back_by_labtaskers_rule(
    tmp_path: Path, kind: str, exit_info: dict[str, Any] | None, last: bool, held: str | None
) -> None:
    helper = Helper(str(tmp_path))
    ended_run(helper, "t1-a1-x", exit_info, slurm=True)
    assert gate_held(helper, gate(kind, last)) == held


def test_every_gate_must_allow_it_and_no_gate_allows_it(tmp_path: Path) -> None:
    helper = Helper(str(tmp_path))
    ended_run(helper, "t1-a1-x", ENDED)
    ended_run(helper, "t2-a1-x", FAILED)
    both = [*gate("after"), {"kind": "after", "task": 2, "run": "t2-a1-x", "last": True}]
    assert gate_held(helper, both) == "task 2 failed"
    assert gate_held(helper, []) is None


def test_a_removed_slurm_run_leaves_its_outcome_for_the_runs_waiting_on_it(
    tmp_path: Path,
) -> None:
    helper = Helper(str(tmp_path))
    Path(helper.slurm.dir).mkdir()
    d = ended_run(helper, "t1-a1-x", ENDED, slurm=True)
    helper.slurm.polled = time.time()  # this helper watches SLURM jobs
    assert helper.op_cleanup({"runs": ["t1-a1-x"]})["removed"] == 1  # keeps it, then removes
    assert not d.exists()
    assert (Path(helper.slurm.dir) / "t1-a1-x.ended").read_text() == "succeeded"
    assert gate_held(helper, gate("after")) is None
    assert gate_held(helper, gate("after_failed")) == "task 1 succeeded"
    # Straight through keep_outcome: a failure, kept the same way.
    ended_run(helper, "t2-a1-x", FAILED, slurm=True)
    helper.slurm.keep_outcome("t2-a1-x")
    shutil.rmtree(helper.run_dir("t2-a1-x"))
    assert gate_held(helper, gate("after_failed", run="t2-a1-x")) is None
    assert gate_held(helper, gate("after", run="t2-a1-x")) == "task 1 failed"


def test_only_a_slurm_run_with_an_outcome_keeps_it(tmp_path: Path) -> None:
    helper = Helper(str(tmp_path))
    Path(helper.slurm.dir).mkdir()
    helper.slurm.polled = time.time()
    ended_run(helper, "t2-a1-x", ENDED)  # an SSH run
    helper.slurm.keep_outcome("t2-a1-x")
    ended_run(helper, "t3-a1-x", None, slurm=True)  # no record: nothing to keep
    helper.slurm.keep_outcome("t3-a1-x")
    assert list(Path(helper.slurm.dir).iterdir()) == []


def test_withdraw_never_writes_over_a_record(tmp_path: Path) -> None:
    helper = Helper(str(tmp_path))
    d = ended_run(helper, "r1", FAILED)
    withdraw(str(d), "task 1 failed")
    assert json.loads((d / "exit.json").read_text()) == FAILED
    fresh = ended_run(helper, "r2", None)
    withdraw(str(fresh), "task 1 failed")
    info = json.loads((fresh / "exit.json").read_text())
    assert info["withdrawn"] == "task 1 failed" and info["exit_code"] is None


def test_a_withdrawn_run_reports_exited_and_why(tmp_path: Path) -> None:
    helper = Helper(str(tmp_path))
    d = ended_run(helper, "r1", None)
    withdraw(str(d), "task 1 failed")
    rep = helper.report("r1", [1 << 20])
    assert rep["state"] == "exited" and rep["withdrawn"] == "task 1 failed"
    checked = wire.check_report("h", rep, ("r1",), "x")
    assert checked["state"] == "exited" and checked["withdrawn"] == "task 1 failed"
    long = ended_run(helper, "r2", None)
    withdraw(str(long), "x" * 600)
    checked = wire.check_report("h", helper.report("r2", [1 << 20]), ("r2",), "x")
    assert checked["withdrawn"] == "x" * 500  # bounded, and still there


def test_a_gated_job_slurm_can_never_start_is_cancelled_and_withdrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = on_path(tmp_path, monkeypatch, logged="scancel", scancel="")
    helper = run_dir(tmp_path / "state", started=False)
    sup = Path(helper.run_dir("r1")) / "supervisor.json"
    spec = {"slurm": {"sbatch": [], "poll": 30, "time_limit": None, "gate": gate("after")}}
    sup.write_text(json.dumps({"slurm": "labtasker-x", "index": 0, "spec": spec}))
    squeue_says(helper, "PENDING")
    helper.slurm.jobs[JOB] = ("PENDING", "DependencyNeverSatisfied", "labtasker-x")
    rep = helper.report("r1", [1 << 20])
    assert rep["state"] == "exited" and "DependencyNeverSatisfied" in rep["withdrawn"], rep
    assert calls.read_text().split() == [JOB]
    # Without a gate it is SLURM's own affair: still pending, nothing cancelled.
    other = run_dir(tmp_path / "plain", started=False)
    squeue_says(other, "PENDING")
    other.slurm.jobs[JOB] = ("PENDING", "DependencyNeverSatisfied", "labtasker-x")
    assert other.report("r1", [1 << 20])["state"] != "exited"
    assert calls.read_text().split() == [JOB]


SLURM_SPEC = {"sbatch": ["--partition=gpu"], "poll": 30, "time_limit": None}


@pytest.mark.parametrize(
    "bad",
    [{"kind": "after", "task": 1, "run": "../x", "last": True},
     {"kind": "after", "task": 1, "last": True},
     {"kind": "afterok", "task": 1, "run": "t1-a1-x", "last": True},
     {"kind": "after", "task": 1, "run": "t1-a1-x"},
     {"kind": "after", "task": 1, "run": "t1-a1-x", "last": "yes"},
     {"kind": "after", "task": "1", "run": "t1-a1-x", "last": True},
     {"kind": ["after"], "task": 1, "run": "t1-a1-x", "last": True},
     "after"],
)  # fmt: skip
def test_a_malformed_gate_is_refused(bad: Any) -> None:
    with pytest.raises(BadRequest, match=r"gate|run_id"):
        _slurm_spec({"slurm": {**SLURM_SPEC, "gate": [bad]}})
    with pytest.raises(BadRequest, match="gate"):
        _slurm_spec({"slurm": {**SLURM_SPEC, "gate": {"kind": "after"}}})


def test_a_good_gate_is_kept_and_none_is_an_empty_one() -> None:
    good = [{"kind": k, "task": 3, "run": "t3-a2-x", "last": False}
            for k in ("after", "after_any", "after_failed")]  # fmt: skip
    assert _slurm_spec({"slurm": {**SLURM_SPEC, "gate": good}})["gate"] == good
    assert _slurm_spec({"slurm": SLURM_SPEC})["gate"] == []


def test_a_run_slurm_ended_has_no_outcome_of_its_own_and_holds_dependents_back(
    tmp_path: Path,
) -> None:
    # SIGTERM from SLURM, no cancel of ours: squeue says whether it was cancelled outside
    # labtasker (failed, maybe retried), timed out, or requeued (lost): the record cannot.
    helper = run_dir(tmp_path, started=True, exit_info=dict(TERMINATED))
    assert run_outcome(helper.run_dir("r1")) is None
    held = [{"kind": "after_any", "task": 1, "run": "r1", "last": False}]
    assert gate_held(helper, held) == "run r1 of task 1 ended without an outcome"
    squeue_says(helper, "CANCELLED")
    rep = helper.report("r1", [1 << 20])  # the controller's reading: failed, not cancelled
    assert rep["state"] == "exited" and not rep["cancelled"], rep
    assert run_outcome(helper.run_dir("r1")) is None  # still only squeue's word: held back
    ours = run_dir(tmp_path / "ours", started=True, exit_info=dict(TERMINATED),
                   cancelled_by_us=True)  # fmt: skip
    assert run_outcome(ours.run_dir("r1")) == "cancelled"


def test_a_gated_job_gone_from_squeue_before_it_started_is_withdrawn_not_lost(
    tmp_path: Path,
) -> None:
    # SLURM cancelled it (kill_invalid_depend) while no controller asked, and squeue forgot it
    # (MinJobAge) with no accounting to ask: it never started its task, so no loss is counted.
    helper = run_dir(tmp_path, started=False)
    sup = Path(helper.run_dir("r1")) / "supervisor.json"
    spec = {"slurm": {"sbatch": [], "poll": 30, "time_limit": None, "gate": gate("after")}}
    sup.write_text(json.dumps({"slurm": "labtasker-x", "index": 0, "spec": spec}))
    squeue_says(helper, "")
    assert helper.report("r1", [1 << 20])["state"] == "starting"  # one poll: maybe just ended
    squeue_says(helper, "", at=helper.slurm.polled + 30)
    rep = helper.report("r1", [1 << 20])
    assert rep["state"] == "exited" and "gone from squeue" in rep["withdrawn"], rep
    assert helper.report("r1", [1 << 20])["withdrawn"] == rep["withdrawn"]  # recorded


def test_a_stray_the_controller_stopped_is_no_outcome_of_its_task(tmp_path: Path) -> None:
    # A run of an attempt given up on (lost while its host was out of reach) that the
    # controller then stops: its task is being retried, so nothing waiting on it may start.
    helper = Helper(str(tmp_path))
    d = Path(helper.run_dir("t1-a1-x"))
    d.mkdir(parents=True)
    (d / "supervisor.json").write_text(json.dumps({"slurm": "labtasker-x", "index": 0}))
    assert helper.op_kill({"run_id": "t1-a1-x", "grace": 1, "stray": True})  # writes cancel.json
    assert json.loads((d / "cancel.json").read_text())["stray"] is True
    (d / "exit.json").write_text(json.dumps(CANCELLED))  # as the wrapper records the stop
    assert run_outcome(str(d)) is None
    assert gate_held(helper, gate("after_any", last=False)) == NO_OUTCOME
    (d / "cancel.json").write_text(json.dumps({"grace": 1, "stray": False}))  # a user's
    assert run_outcome(str(d)) == "cancelled"


def test_an_exit_record_arriving_after_the_run_was_reported_lost_is_no_outcome(
    tmp_path: Path,
) -> None:
    # The controller counted a loss and retries the task: a record that reaches the shared
    # file system later must not let a run gated on this one start.
    helper = run_dir(tmp_path, started=True)
    squeue_says(helper, "NODE_FAIL")
    assert helper.report("r1", [1 << 20])["state"] == "lost"
    d = Path(helper.run_dir("r1"))
    (d / "exit.json").write_text(json.dumps(ENDED))  # late: exit 0
    assert run_outcome(str(d)) is None
    held = [{"kind": "after", "task": 1, "run": "r1", "last": True}]
    assert gate_held(helper, held) == "run r1 of task 1 ended without an outcome"
