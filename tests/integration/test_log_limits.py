"""Logs and results have limits on the controller, through real dispatch over sshd.

A log over the host's ``max_log_size`` keeps its head and its tail around one
``[labtasker: N bytes cut]`` line, and dispatch says so once for that task; a result over the
limit fails its task with a reason that says what to do, and the dispatcher goes on.
"""

from __future__ import annotations

from tests.integration.conftest import Lab, finish

LIMIT = 64 * 1024
BIG = 3_000_000
#: What the big task prints: a head, BIG bytes without a newline, a tail.
PRINTED = b"BEGIN\n" + b"x" * BIG + b"\nEND\n"


def test_a_big_log_keeps_its_head_and_tail_and_dispatch_says_so_once(lab: Lab) -> None:
    lab.hosts_toml("cpu", cpu={"max_log_size": "64KiB"})
    (big,) = lab.add_cmd(f"echo BEGIN; head -c {BIG} /dev/zero | tr '\\0' x; echo; echo END")
    (small,) = lab.add_cmd("echo small")

    code, out, err = finish(lab.start("dispatch"))

    assert code == 0, out + err
    cut = len(PRINTED) - LIMIT
    half = LIMIT // 2
    logs = lab.db.with_name("queue.logs")
    kept = (logs / f"{lab.task(big)['run_id']}.log").read_bytes()
    assert kept == PRINTED[:half] + f"\n[labtasker: {cut} bytes cut]\n".encode() + PRINTED[-half:]
    assert (logs / f"{lab.task(small)['run_id']}.log").read_bytes() == b"small\n"
    said = [x for x in (out + err).splitlines() if "over max_log_size" in x]
    assert len(said) == 1 and f"task {big} on cpu" in said[0] and f"{cut} bytes cut" in said[0]


def test_a_result_over_its_limit_fails_that_task_only(lab: Lab) -> None:
    lab.hosts_toml("cpu")
    write = "import json,os; json.dump({'x': 'a' * %d}, open(os.environ['LABTASKER_RESULT'], 'w'))"
    (big,) = lab.add_cmd(f'python3 -c "{write % 2_000_000}"')
    (small,) = lab.add_cmd(f'python3 -c "{write % 10}"')

    code, out, err = finish(lab.start("dispatch"))

    assert code == 1, out + err
    assert "Traceback" not in out + err
    failed, ok = lab.task(big), lab.task(small)
    assert failed["state"] == "failed", failed
    assert "result.json is 2000009 bytes; the limit is" in failed["reason"], failed
    assert "write a smaller result to LABTASKER_RESULT" in failed["reason"], failed
    assert failed["result"] is None
    assert ok["state"] == "succeeded" and ok["result"] == {"x": "a" * 10}, ok
