"""Task failures on real hosts: exit codes, signals, timeouts, automatic and manual retries."""

from __future__ import annotations

from tests.integration.faults_lab import FaultLab, alive


def test_exit_code_signal_timeout_and_retries_end_right(faults: FaultLab) -> None:
    hosts = faults.hosts_toml("gpu2", "cpu")
    (exits_3,) = faults.add(1, sleep=0.1, exit_code=3)
    (killed,) = faults.add(1, sleep=0.1, mode="sigkill")
    (slow,) = faults.add(1, sleep=60, mode="ignore-term", options=("--timeout", "1"))
    (third,) = faults.add(
        1, sleep=0.1, exit_code=5, succeed_from=3, options=("--max-attempts", "3")
    )
    (never,) = faults.add(1, sleep=0.1, exit_code=4, options=("--max-attempts", "2"))
    code, out, err = faults.run_dispatch(hosts)
    assert code == 1, (out, err)
    tasks = {t["id"]: t for t in faults.lab.tasks()}
    counts = faults.start_counts()

    assert tasks[exits_3]["state"] == "failed" and tasks[exits_3]["exit_code"] == 3
    assert tasks[exits_3]["reason"] == "exit 3"
    assert tasks[killed]["state"] == "failed" and "SIGKILL" in tasks[killed]["reason"]
    # Past its timeout: TERM (ignored), then KILL of the whole process group.
    assert tasks[slow]["state"] == "failed" and "timed out after 1s" in tasks[slow]["reason"]
    (slow_start,) = [s for s in faults.starts() if s["task"] == slow]
    assert not alive(slow_start["pid"])
    # --max-attempts 3: fails twice, succeeds on its third try; every attempt is on record.
    assert tasks[third]["state"] == "succeeded" and tasks[third]["attempt"] == 3
    assert tasks[third]["result"] == {"task": third, "run": tasks[third]["run_id"]}
    history = faults.attempts(third)
    assert [(a.attempt, str(a.outcome), a.exit_code) for a in history] == [
        (1, "failed", 5),
        (2, "failed", 5),
        (3, "succeeded", 0),
    ]
    assert tasks[never]["state"] == "failed" and tasks[never]["attempt"] == 2
    assert [counts[i] for i in (exits_3, killed, slow, third, never)] == [1, 1, 1, 3, 2]

    # `queue retry` requeues by hand; the next dispatch runs it once more.
    faults.lab.ok("queue", "retry", str(exits_3))
    assert faults.lab.task(exits_3)["state"] == "pending"
    code, out, err = faults.run_dispatch(hosts)
    assert code == 1, (out, err)
    assert faults.start_counts()[exits_3] == 2
    assert faults.lab.task(exits_3)["state"] == "failed"
