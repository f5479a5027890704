"""The controller's checks on what a host sends (remote/wire.py), message by message."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from dispatcher.core.models import Task, TaskState
from dispatcher.core.outcome import outcome_of
from dispatcher.dispatch.logs import LogCollector
from dispatcher.errors import ProtocolViolationError
from dispatcher.remote import wire

RUN = "t1-a1-abc"


def report(**extra: Any) -> dict[str, Any]:
    rep: dict[str, Any] = {"run_id": RUN, "state": "exited", "exit_code": 0, "log_size": 0}
    rep.update(extra)
    return rep


def violates(match: str, rep: Any, asked: tuple[str, ...] = (RUN,)) -> None:
    with pytest.raises(ProtocolViolationError, match=f"^h: protocol violation: .*{match}"):
        wire.check_report("h", rep, asked, "an exit event")


@pytest.mark.parametrize("bad", ["../../x", "..", ".", "a/b", "", "x" * 129, 7, None])
def test_a_malformed_run_id_is_a_violation(bad: Any) -> None:
    violates("malformed run id", report(run_id=bad), asked=(RUN, str(bad)))


def test_a_run_not_asked_about_is_a_violation() -> None:
    violates("not asked about", report(run_id="t2-a1-abc"))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("error", "a\0b", "NUL"),
        ("error", "x" * (wire.MAX_TEXT + 1), "characters long"),
        ("error", 5, "not a text"),
        ("exit_code", "0", "not a number"),
        ("exit_code", True, "not a number"),
        ("log_size", -1, "not a number"),
        ("state", "exploded", "state"),
        ("cancelled", "yes", "true/false"),
        ("result", [1, 2], "not an object"),
        ("log", "not base64!", "base64"),
        ("log_tail", "x" * 8193, "at most 8192"),
        ("log_tail", 5, "at most 8192"),
        ("oom_killed", "yes", "true/false/null"),
    ],
)
def test_wrong_types_and_unbounded_texts_are_violations(field: str, value: Any, match: str) -> None:
    violates(match, report(**{field: value}))


def test_control_characters_in_texts_become_spaces() -> None:
    got = wire.check_report("h", report(error="a\x1b[2Jb\nc"), (RUN,), "x")
    assert got["error"] == "a [2Jb c"


def test_unknown_fields_are_kept_only_as_bounded_scalars() -> None:
    got = wire.check_report(
        "h", report(extra=1, nested={"a": [1]}, result_refused="forged"), (RUN,), "x"
    )
    assert got["extra"] == 1 and "nested" not in got and "result_refused" not in got


def task() -> Task:
    return Task(id=1, state=TaskState.RUNNING, args={}, template="t", command="t", run_id=RUN)


def test_a_result_over_the_controllers_limit_fails_the_task() -> None:
    big = {"x": "a" * wire.MAX_RESULT_BYTES}
    got = wire.check_report("h", report(result=big), (RUN,), "x")
    assert got["result"] is None and "the limit is" in got["result_refused"]
    out = outcome_of(got, task())
    assert out.state is TaskState.FAILED and "write a smaller result" in out.fields["reason"]


def test_a_result_nested_too_deeply_fails_the_task() -> None:
    deep: dict[str, Any] = {}
    for _ in range(wire.MAX_RESULT_DEPTH + 1):
        deep = {"a": deep}
    got = wire.check_report("h", report(result=deep), (RUN,), "x")
    assert got["result"] is None and "nested more than" in got["result_refused"]
    assert outcome_of(got, task()).state is TaskState.FAILED


def test_the_helpers_own_result_limit_fails_the_task() -> None:
    said = "result.json is 300000 bytes; the limit is 262144"
    got = wire.check_report("h", report(result_error=said), (RUN,), "x")
    out = outcome_of(got, task())
    assert out.state is TaskState.FAILED and said in out.fields["reason"]


def test_a_small_result_and_a_bad_one_succeed_as_before() -> None:
    got = wire.check_report("h", report(result={"loss": 0.5}), (RUN,), "x")
    assert outcome_of(got, task()).state is TaskState.SUCCEEDED
    got = wire.check_report("h", report(result_error="not a JSON object"), (RUN,), "x")
    assert outcome_of(got, task()).state is TaskState.SUCCEEDED


def test_replies_name_only_the_runs_asked_about() -> None:
    with pytest.raises(ProtocolViolationError, match="not asked about"):
        wire.check_reply("h", "probe", {"runs": [RUN]}, {"ok": True, "runs": {"t9-a1-z": {}}})
    with pytest.raises(ProtocolViolationError, match="not asked about"):
        run = {"status": "exists", "run": report(run_id="t9-a1-z")}
        wire.check_reply(
            "h", "launches", {"runs": [{"run_id": RUN}]}, {"ok": True, "runs": {RUN: run}}
        )
    with pytest.raises(ProtocolViolationError, match="within the size asked"):
        data = base64.b64encode(b"x" * 10).decode()
        wire.check_reply(
            "h", "read", {"run_id": RUN, "size": 3}, {"ok": True, "data": data, "size": 10}
        )


def test_a_failed_runs_last_lines_keep_their_newlines() -> None:
    got = wire.check_report("h", report(log_tail="a\0b\x1b[K\nc\n", oom_killed=None), (RUN,), "x")
    assert got["log_tail"] == "a b [K\nc\n" and got["oom_killed"] is None


GPU = {"index": 0, "uuid": "GPU-1", "name": "H100", "memory_used_mib": 5,
       "memory_total_mib": 81920, "utilization": 0}  # fmt: skip
PROC = {"gpu_uuid": "GPU-1", "pid": 4, "user": "me", "used_memory_mib": 5, "name": "python",
        "run_id": RUN}  # fmt: skip


@pytest.mark.parametrize(
    ("gpu", "proc", "match"),
    [
        ({"memory_total_mib": -1}, {}, "outside 0 to"),
        ({"memory_used_mib": "5"}, {}, "not a number"),
        ({"memory_used_mib": float("nan")}, {}, "outside 0 to"),
        ({"name": "x" * 300}, {}, "characters long"),
        ({}, {"used_memory_mib": 2**31}, "outside 0 to"),
        ({}, {"run_id": "../x"}, "bad run_id"),
        ({}, {"run_id": 7}, "bad run_id"),
    ],
)
def test_gpu_memory_and_run_ids_from_a_host_are_checked(
    gpu: dict[str, Any], proc: dict[str, Any], match: str
) -> None:
    reply = {"ok": True, "gpus": [{**GPU, **gpu}], "processes": [{**PROC, **proc}], "error": None}
    with pytest.raises(ProtocolViolationError, match=match):
        wire.check_reply("h", "gpus", {}, reply)
    fine = {"ok": True, "gpus": [GPU], "processes": [{**PROC, "used_memory_mib": None}]}
    assert (
        wire.check_reply("h", "gpus", {}, {**fine, "error": None})["processes"][0]["run_id"] == RUN
    )


def test_task_output_in_a_tail_is_cleaned_not_refused() -> None:
    reply = {"ok": True, "lines": {RUN: "50%\0\x1b[K"}}
    got = wire.check_reply("h", "tail", {"runs": [RUN], "bytes": 4096}, reply)
    assert got["lines"] == {RUN: "50%  [K"}


def test_a_line_with_too_many_elements_is_refused_before_parsing() -> None:
    line = json.dumps({"a": [0] * (wire.MAX_ITEMS + 1)}).encode()
    with pytest.raises(ProtocolViolationError, match="JSON elements"):
        wire.parse_line("h", line)


@pytest.mark.parametrize(
    "line", [rb'{"ok": true, "error": "x\ud800"}', rb'{"ok": true, "result": {"a": "\udc00"}}']
)
def test_half_a_surrogate_pair_is_refused(line: bytes) -> None:
    # JSON may escape half of a UTF-16 pair; such a string is no text: it can be neither
    # stored nor encoded, so a line holding one drops the host instead of crashing the loop.
    with pytest.raises(ProtocolViolationError, match="not a JSON object of text"):
        wire.parse_line("h", line)


def test_a_whole_surrogate_pair_is_text() -> None:
    line = json.dumps({"ok": True, "error": "ok \U0001f600"}).encode()  # escaped as a pair
    assert b"\\ud83d" in line and wire.parse_line("h", line)["error"] == "ok \U0001f600"


def test_an_inline_log_over_max_log_size_keeps_head_and_tail(tmp_path: Path) -> None:
    printed = b"".join(b"line %d\n" % i for i in range(1000))
    rep = report(log=base64.b64encode(printed).decode(), log_size=len(printed))
    saved = LogCollector(tmp_path).write_inline(rep, limit=100)
    assert saved is not None and saved.first_cut and saved.cut == len(printed) - 100
    marker = f"[labtasker: {len(printed) - 100} bytes cut]\n".encode()
    assert saved.path.read_bytes() == printed[:50] + b"\n" + marker + printed[-50:]


@pytest.mark.parametrize(
    ("sent", "kept"), [(True, True), ("yes", False), (1, False), (None, False)]
)
def test_a_launch_error_keeps_withdrawn_only_when_it_is_true(sent: Any, kept: bool) -> None:
    # A failed sbatch of a run submitted ahead of its dependencies: nothing counted against it.
    reply = {"status": "error", "error": "x", "withdrawn": sent}
    got = wire.check_reply(
        "h", "launches", {"runs": [{"run_id": RUN}]}, {"ok": True, "runs": {RUN: reply}}
    )
    assert got["runs"][RUN]["withdrawn"] is kept
    assert got["runs"][RUN]["error"] == "x" and got["runs"][RUN]["snapshot_missing"] is False
