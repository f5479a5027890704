"""outcome.py: a finished run's report -> the task's next state, its fields and any retry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.core.models import MAX_LOSSES, TRANSITIONS, Task, TaskState
from dispatcher.core.outcome import (
    describe_exit,
    lost_outcome,
    outcome_of,
    parse_time,
    real_attempts,
)

S = TaskState


def task(**kw: Any) -> Task:
    base: dict[str, Any] = {"host": "gpu-a", "attempt": 1, "max_attempts": 1}
    return Task(1, S.RUNNING, {}, "t", "t", **{**base, **kw})


def report(**kw: Any) -> dict[str, Any]:
    return {
        "run_id": "r",
        "state": "exited",
        "started_at": "2026-01-01T10:00:00.5Z",
        "finished_at": "2026-01-01T10:00:03Z",
        **kw,
    }


def test_exit_0_succeeds_with_result_and_times() -> None:
    out = outcome_of(report(exit_code=0, result={"acc": 0.9}), task())
    assert out.state is S.SUCCEEDED and not out.counts_as_failure
    assert out.fields["result"] == {"acc": 0.9} and out.fields["exit_code"] == 0
    assert out.fields["started_at"] == datetime(2026, 1, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert out.fields["reason"] is None


def test_a_bad_result_file_is_noted_but_does_not_fail_the_task() -> None:
    out = outcome_of(report(exit_code=0, result_error="not a JSON object"), task())
    assert out.state is S.SUCCEEDED
    assert out.fields["reason"] == "result not recorded: not a JSON object"


@pytest.mark.parametrize(
    ("rep", "reason"),
    [
        ({"exit_code": 3}, "exit 3"),
        ({"exit_code": -9}, "killed by SIGKILL"),
        ({"exit_code": 137}, "exit 137 (SIGKILL: killed by a signal, e.g. out of memory)"),
        ({"exit_code": -15, "timed_out": True}, "timed out after 5s (killed by SIGTERM)"),
        ({"exit_code": None, "error": "workdir missing"}, "could not start: workdir missing"),
        ({"exit_code": 1, "pid": 7, "error": "disk full on h"}, "exit 1; disk full on h"),
    ],
)
def test_failures_say_why(rep: dict[str, Any], reason: str) -> None:
    out = outcome_of(report(**rep), task(timeout=5.0))
    assert out.state is S.FAILED and out.counts_as_failure
    assert out.fields["reason"] == reason and out.requeue_reason is None


def test_a_failure_with_attempts_left_is_requeued() -> None:
    out = outcome_of(report(exit_code=1), task(attempt=1, max_attempts=3))
    assert out.requeue_reason == "attempt 1/3 failed (exit 1); retrying"


def test_cancelled_wins_over_the_exit_code() -> None:
    out = outcome_of(report(exit_code=-15, cancelled=True), task(max_attempts=5))
    assert out.state is S.CANCELLED and out.fields["reason"] == "cancelled by user"
    assert out.requeue_reason is None and not out.counts_as_failure


def test_losses_requeue_until_the_limit_then_fail() -> None:
    first = lost_outcome(task(losses=0), "host rebooted")
    assert first.state is S.LOST and first.fields["losses"] == 1
    assert first.requeue_reason == "requeued after being lost on gpu-a (host rebooted)"
    last = lost_outcome(task(losses=MAX_LOSSES - 1), "gone")
    assert last.requeue_reason is None
    assert last.fail_after_loss == f"lost {MAX_LOSSES} times (last on gpu-a: gone); giving up"


def test_losses_do_not_count_as_attempts() -> None:
    assert real_attempts(task(attempt=3, losses=2)) == 1


@pytest.mark.parametrize("text", [None, "", "yesterday", 5])
def test_unparsable_times_are_none(text: object) -> None:
    assert parse_time(text) is None


@given(
    code=st.one_of(st.none(), st.integers(-64, 300)),
    flags=st.fixed_dictionaries(
        {}, optional={"cancelled": st.booleans(), "timed_out": st.booleans(), "error": st.text()}
    ),
    attempt=st.integers(1, 5),
    max_attempts=st.integers(1, 5),
)
def test_every_report_maps_to_a_legal_move(
    code: int | None, flags: dict[str, Any], attempt: int, max_attempts: int
) -> None:
    t = task(attempt=attempt, max_attempts=max_attempts)
    out = outcome_of(report(exit_code=code, **flags), t)
    assert out.state in TRANSITIONS[S.RUNNING]
    if out.requeue_reason:
        assert S.PENDING in TRANSITIONS[out.state] and attempt < max_attempts
    assert out.state is not S.SUCCEEDED or (code == 0 and not flags.get("error"))
    assert isinstance(describe_exit(code, None), str)


def test_a_lost_reason_names_the_host_once() -> None:
    why = "host unreachable for more than 3s (gpu-a (10.0.0.5:22): connection lost)"
    out = lost_outcome(task(losses=0), why)
    assert out.fields["reason"] == (
        "lost on gpu-a: host unreachable for more than 3s (10.0.0.5:22: connection lost)"
    )
    assert out.requeue_reason is not None and out.requeue_reason.count("gpu-a") == 1
    other = lost_outcome(task(losses=0), "gone (gpu-ab: x)")  # another host's name stays
    assert other.fields["reason"] == "lost on gpu-a: gone (gpu-ab: x)"


TORCH_OOM = (
    'epoch 3\nTraceback (most recent call last):\n  File "train.py", line 9\n'
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB"
    " total capacity)\n"
)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"exit_code": 1, "log_tail": TORCH_OOM}, "CUDA out of memory (exit 1)"),
        ({"exit_code": 1, "log_tail": "RuntimeError: CUDA error: out of memory\n"},
         "CUDA out of memory (exit 1)"),
        ({"exit_code": -9, "oom_killed": True}, "killed by the OOM killer (killed by SIGKILL)"),
        ({"exit_code": -9, "oom_killed": False}, "killed by SIGKILL"),
        ({"exit_code": -9, "oom_killed": None}, "killed by SIGKILL"),
        ({"exit_code": 1, "oom_killed": True}, "exit 1"),  # not killed: someone else's OOM
        ({"exit_code": 1, "log_tail": "ModuleNotFoundError: No module named 'wandb'\n"},
         "missing module wandb (exit 1)"),
        ({"exit_code": 1, "log_tail": "ModuleNotFoundError: No module named 'a.b'\n"},
         "missing module a.b (exit 1)"),
        ({"exit_code": 1, "log_tail": "all fine\n"}, "exit 1"),
    ],
)  # fmt: skip
def test_a_failure_is_named_by_what_it_died_of(fields: dict[str, Any], reason: str) -> None:
    out = outcome_of(report(**fields), task())
    assert out.state is S.FAILED and out.fields["reason"] == reason
    assert out.cuda_oom == reason.startswith("CUDA out of memory")


def test_an_old_error_far_above_the_last_lines_does_not_name_the_failure() -> None:
    tail = "CUDA out of memory (caught, batch halved)\n" + "step\n" * 60 + "ValueError: x\n"
    assert outcome_of(report(exit_code=1, log_tail=tail), task()).fields["reason"] == "exit 1"


def test_a_timeout_stays_a_timeout_whatever_it_printed() -> None:
    out = outcome_of(report(exit_code=-15, timed_out=True, log_tail=TORCH_OOM), task(timeout=5))
    assert out.fields["reason"].startswith("timed out after 5s") and not out.cuda_oom


def test_a_cuda_oom_with_attempts_left_is_retried() -> None:
    out = outcome_of(report(exit_code=1, log_tail=TORCH_OOM), task(max_attempts=2))
    assert out.requeue_reason == "attempt 1/2 failed (CUDA out of memory (exit 1)); retrying"
    assert out.cuda_oom
