"""The task lifecycle table and the records every layer shares."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from dispatcher.core.models import (
    ACTIVE_STATES,
    DUPLICATE_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    NewTask,
    Task,
    TaskState,
    check_transition,
    parse_state,
)
from dispatcher.errors import IllegalTransitionError, UsageError

S = TaskState
ALL_MOVES = [(a, b) for a in TaskState for b in TaskState]


def test_every_state_has_a_row_and_moves_stay_inside_the_enum() -> None:
    assert set(TRANSITIONS) == set(TaskState)
    for targets in TRANSITIONS.values():
        assert targets <= set(TaskState)


def test_succeeded_is_final_and_pending_is_reached_only_by_retry_requeue_or_withdrawal() -> None:
    assert TRANSITIONS[S.SUCCEEDED] == frozenset()
    into_pending = {a for a, targets in TRANSITIONS.items() if S.PENDING in targets}
    # running -> pending: a SLURM job its dependency's outcome held back (withdrawn)
    assert into_pending == {S.LAUNCHING, S.RUNNING, S.FAILED, S.CANCELLED, S.LOST}
    assert all(a not in TRANSITIONS[a] for a in TaskState)


@pytest.mark.parametrize(("old", "new"), ALL_MOVES)
def test_check_transition_follows_the_table_and_names_both_states(
    old: TaskState, new: TaskState
) -> None:
    if new in TRANSITIONS[old]:
        check_transition(7, old, new)
        return
    with pytest.raises(IllegalTransitionError) as err:
        check_transition(7, old, new)
    message = str(err.value)
    assert message.startswith("task 7:") and f"from {old} to {new}" in message


def test_state_sets() -> None:
    assert {S.LAUNCHING, S.RUNNING} == ACTIVE_STATES
    assert not ACTIVE_STATES & TERMINAL_STATES
    assert S.LOST not in TERMINAL_STATES  # the dispatcher requeues or fails lost tasks
    assert {S.PENDING, S.LAUNCHING, S.RUNNING, S.SUCCEEDED} == DUPLICATE_STATES


@pytest.mark.parametrize("text", ["running", " RUNNING ", "Running"])
def test_parse_state_is_forgiving_about_case_and_space(text: str) -> None:
    assert parse_state(text) is S.RUNNING


def test_parse_state_lists_the_valid_states() -> None:
    with pytest.raises(UsageError, match="unknown state 'runing'; valid states: pending, "):
        parse_state("runing")


def test_task_json_shape() -> None:
    t = Task(
        id=3,
        state=S.RUNNING,
        args={"lr": 0.1},
        template="t %{lr}",
        command="t 0.1",
        gpus=2,
        gpu_ids=[0, 1],
        host="gpu-a",
        created_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    )
    data = t.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["state"] == "running" and data["gpus_requested"] == 2 and data["gpus"] == [0, 1]
    assert data["created_at"] == "2024-05-01T12:00:00Z" and data["started_at"] is None
    assert t.replace(state=S.SUCCEEDED).state is S.SUCCEEDED and t.state is S.RUNNING


def test_new_task_defaults() -> None:
    n = NewTask(args={}, template="x", command="x")
    assert (n.priority, n.max_attempts, n.timeout, n.gpus, n.after, n.name) == (
        0,
        1,
        None,
        None,
        (),
        None,
    )
