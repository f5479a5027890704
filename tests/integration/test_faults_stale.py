"""Faults that once broke "never twice, nothing left behind", each reproduced on real sshd hosts.

A stalled session that delivers an old launch after a new controller moved on; keepers left
behind by an interrupted dispatch; a cancel sent into a connection that then died; another
process holding the queue file while tasks run and report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from dispatcher.dispatch.logs import last_lines_path
from tests.integration.conftest import finish
from tests.integration.faults_lab import FaultLab, alive, connected, kill9
from tests.sshd import SshdHost, poll


def labtasker_processes(host: SshdHost) -> list[str]:
    """Processes of the host's user other than sshd's own: helpers, keepers, tasks."""
    return [
        p.cmdline
        for p in host.processes()
        if p.uid == host.uid and not p.cmdline.startswith("sshd")
    ]


def assert_nothing_left(host: SshdHost) -> None:
    """Nothing of labtasker or of a task stays alive on ``host`` (polled for 15 s)."""
    try:
        poll(lambda: not labtasker_processes(host), f"{host.alias}: nothing left running")
    except AssertionError:
        raise AssertionError(f"left on {host.alias}: {labtasker_processes(host)}") from None


def test_a_launch_delivered_late_by_a_stalled_session_starts_nothing(faults: FaultLab) -> None:
    cpu = faults.lab.hosts.cpu
    # Keepalives slow enough that this controller does not give up the session by itself.
    stalled_hosts = faults.hosts_toml("cpu", keepalive_interval=60)  # 2 slots
    proc = faults.dispatch(stalled_hosts, "--forever")
    (first,) = faults.add(1, sleep=0)
    faults.lab.wait_task(first, ["succeeded"])  # the session is up and serving
    stalled = cpu.connection_pids(monitors=True)
    cpu.freeze()  # the session stalls: its TCP connection stays open, nothing answers
    ids = faults.add(2, sleep=0.2)
    faults.wait(lambda: faults.count_in("launching") == 2, "two tasks launching")
    kill9(proc)  # the launch sits in the stalled session's socket
    # A new controller: its helper launches the same run ids and collects them.
    code, out, err = faults.run_dispatch(faults.hosts_toml("cpu"))
    assert code == 0, (out, err)
    faults.assert_exactly_once(ids)
    cpu.thaw()  # the old bytes reach the old helper now: it must start nothing
    faults.wait(lambda: not any(map(alive, stalled)), "the stalled session ended")
    faults.wait(
        lambda: not [c for c in labtasker_processes(cpu) if "starts.py" in c], "no task running"
    )
    done = faults.assert_exactly_once(ids)  # from the host's own record of process starts
    assert all(t["attempt"] == 1 for t in done)
    assert_nothing_left(cpu)


def test_no_keeper_stays_after_an_interrupted_dispatch(faults: FaultLab) -> None:
    hosts = faults.hosts_toml("gpu2", "cpu")
    ids = faults.add(4, sleep=1.5)
    proc = faults.dispatch(hosts)
    faults.wait(lambda: faults.count_in("running") == 4, "four tasks running")
    kill9(proc)  # every helper loses its controller while its keeper watches running tasks
    code, out, err = faults.run_dispatch(hosts)
    assert code == 0, (out, err)
    faults.assert_exactly_once(ids)
    for host in (faults.lab.hosts.gpu2, faults.lab.hosts.cpu):
        assert_nothing_left(host)


def test_a_cancel_whose_connection_died_is_sent_again(faults: FaultLab) -> None:
    cpu = faults.lab.hosts.cpu
    hosts = faults.hosts_toml("cpu")
    (task_id,) = faults.add(1, sleep=120)
    proc = faults.dispatch(hosts)
    faults.lab.wait_task(task_id, ["running"])
    faults.wait(lambda: faults.start_counts()[task_id] == 1, "the task started")
    stalled = cpu.connection_pids(monitors=True)
    cpu.freeze()
    faults.lab.ok("queue", "cancel", str(task_id))  # its kill goes into the stalled session
    faults.wait(lambda: not connected(proc, cpu), "dispatch gave up the stalled connection")
    for pid in stalled:  # that session dies: the kill in it is never delivered
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    cpu.frozen = False
    task = faults.lab.wait_task(task_id, ["cancelled"], timeout=60)
    assert task["attempt"] == 1, task
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    assert "cancelling again on cpu" in out or "cancelling on cpu" in out, out
    assert_nothing_left(cpu)


HOLDER = r"""
import sys, time, duckdb
while True:
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        time.sleep(0.01)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_dispatch_stays_alive_while_another_process_holds_the_queue(faults: FaultLab) -> None:
    hosts = faults.hosts_toml("gpu2", "cpu")
    ids = faults.add(4, sleep=6)
    proc = faults.dispatch(hosts, env={"LABTASKER_LOCK_TIMEOUT": "120"})
    faults.wait(lambda: faults.count_in("running") == 4, "four tasks running")
    status = last_lines_path(faults.lab.db)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(faults.lab.db), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        # Held for 30 s, while the tasks end and report: the status file keeps being written.
        times: list[float] = []
        gaps: list[float] = []
        while holder.poll() is None:
            written = json.loads(status.read_text())["written_at"]
            if not times or written != times[-1]:
                times.append(written)
            gaps.append(time.time() - times[-1])
            time.sleep(0.2)
    finally:
        holder.wait(60)
        assert holder.stdout is not None
        holder.stdout.close()
    assert max(gaps) < 5.0, f"the status file went {max(gaps):.1f} s without a write"
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    done = faults.assert_exactly_once(ids)
    assert all(t["attempt"] == 1 for t in done)
    assert "connection lost" not in out and "unreachable" not in out, out
    assert all(faults.losses(i) == 0 for i in ids)
