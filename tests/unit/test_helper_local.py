"""The helper's run lifecycle on this machine: launch, exit events, timeout, cancel, probe, loss."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatcher.errors import RemoteError
from tests.helper_harness import (
    LocalHelper,
    eventually,
    gate_command,
    live_group_members,
    pid_running,
)


def log_text(report: dict[str, object]) -> str:
    assert isinstance(report["log"], str), report
    return base64.b64decode(report["log"]).decode()


async def wait_ready(h: LocalHelper, run_id: str) -> None:
    async def ready() -> bool:
        lines = (await h.call("tail", runs=[run_id]))["lines"]
        return bool(lines[run_id] == "ready")

    await eventually(ready, what=f"{run_id} printing ready")


async def test_exit_event_carries_exit_code_result_and_log(helper: LocalHelper) -> None:
    cmd = """echo "hello from $LABTASKER_RUN_ID"; printf '{"loss": 0.25}' > "$LABTASKER_RESULT" """
    reply = await helper.launch("r1", cmd, task_id=7)
    assert reply["status"] == "started" and reply["pid"] > 0
    rep = await helper.wait_exit("r1")
    assert rep["state"] == "exited"
    assert rep["exit_code"] == 0 and rep["signal"] is None
    assert not rep["timed_out"] and not rep["cancelled"] and rep["error"] is None
    assert rep["result"] == {"loss": 0.25} and rep["result_error"] is None
    assert log_text(rep) == "hello from r1\n"
    assert rep["log_size"] == len("hello from r1\n")
    assert rep["started_at"].endswith("Z") and rep["finished_at"] >= rep["started_at"]
    assert rep["boot_id"] == helper.client.hello["boot_id"] if helper.client else False


async def test_nonzero_exit_is_data_and_a_non_object_result_is_reported(
    helper: LocalHelper,
) -> None:
    await helper.launch("r3", 'echo "[1, 2]" > "$LABTASKER_RESULT"; echo oops >&2; exit 3')
    rep = await helper.wait_exit("r3")
    assert rep["exit_code"] == 3 and rep["signal"] is None
    assert rep["result"] is None and "not a JSON object" in rep["result_error"]
    assert log_text(rep) == "oops\n"
    assert rep["log_tail"] == "oops\n"  # what names the failure, however long the log


async def test_a_failed_runs_report_carries_its_last_4_kib_and_oom_kill_record(
    helper: LocalHelper,
) -> None:
    await helper.launch("long", "head -c 100000 /dev/zero | tr '\\0' x; echo; echo LAST; exit 1")
    rep = await helper.wait_exit("long")
    assert rep["log"] is None and rep["log_tail"].endswith("x\nLAST\n")
    assert len(rep["log_tail"]) == 4096
    assert rep["oom_killed"] in (False, None)  # None where the cgroup's record is unreadable
    await helper.launch("fine", "echo ok")
    ok = await helper.wait_exit("fine")
    assert ok.get("log_tail") is None and ok.get("oom_killed") is None


async def test_death_by_signal_gives_negative_code_and_its_name(helper: LocalHelper) -> None:
    await helper.launch("sig", "kill -KILL $$")
    # bash runs the script's last command in its own place: its signal is the task's.
    await helper.launch("last", "true; sh -c 'kill -KILL $$'")
    # A shell that outlives its child turns the signal into an exit code, 128 + N.
    await helper.launch("shell-style", "sh -c 'kill -KILL $$'; exit $?")
    rep = await helper.wait_exit("sig")
    assert (rep["exit_code"], rep["signal"]) == (-9, "SIGKILL")
    rep = await helper.wait_exit("last")
    assert (rep["exit_code"], rep["signal"]) == (-9, "SIGKILL")
    rep = await helper.wait_exit("shell-style")
    assert (rep["exit_code"], rep["signal"]) == (128 + 9, None)


async def test_timeout_terms_the_task(helper: LocalHelper) -> None:
    await helper.launch("slow", "sleep 30", timeout=0.2, kill_grace=5)
    rep = await helper.wait_exit("slow")
    assert rep["timed_out"] and not rep["cancelled"]
    assert (rep["exit_code"], rep["signal"]) == (-15, "SIGTERM")


async def test_timeout_kills_a_task_that_ignores_term(helper: LocalHelper) -> None:
    await helper.launch(
        "stubborn", "trap '' TERM; echo ready; sleep 30", timeout=0.5, kill_grace=0.2
    )
    rep = await helper.wait_exit("stubborn")
    assert log_text(rep) == "ready\n"
    assert rep["timed_out"]
    assert (rep["exit_code"], rep["signal"]) == (-9, "SIGKILL")
    assert live_group_members(helper.started("stubborn")["pgid"]) == []


async def test_kill_cancels_the_whole_process_group(helper: LocalHelper, tmp_path: Path) -> None:
    # The sleep is a child of bash: only a group signal reaches it.
    await helper.launch("victim", "echo ready; sleep 30; echo not reached")
    await wait_ready(helper, "victim")
    started = helper.started("victim")
    assert started["pgid"] == started["pid"] and len(live_group_members(started["pgid"])) == 2
    # The keeper holds none of the helper's stdio (the SSH channel): its own are /dev/null,
    # the rest are its wakeup pipe and its two pipes to the helper.
    assert helper.client is not None
    helper_fds = {os.readlink(f"/proc/{helper.client.hello['pid']}/fd/{n}") for n in (0, 1, 2)}
    fds = Path(f"/proc/{started['supervisor_pid']}/fd")
    links = [os.readlink(fds / str(n)) for n in sorted(int(f.name) for f in fds.iterdir())]
    assert links[:3] == ["/dev/null"] * 3 and len(links) == 7, links
    assert not helper_fds & set(links), (helper_fds, links)
    assert (await helper.call("kill", run_id="victim", grace=5))["status"] == "signalled"
    rep = await helper.wait_exit("victim")
    assert rep["cancelled"] and not rep["timed_out"]
    assert (rep["exit_code"], rep["signal"]) == (-15, "SIGTERM")
    with pytest.raises(ProcessLookupError):
        os.kill(started["pid"], 0)
    assert live_group_members(started["pgid"]) == []
    assert (await helper.call("kill", run_id="victim", grace=5))["status"] == "exited"
    assert (await helper.call("kill", run_id="never", grace=5))["status"] == "absent"


async def test_kill_uses_its_own_grace_then_sigkill(helper: LocalHelper) -> None:
    # kill_grace 60 in the spec: only the kill request's 0.2 s grace lets this end in time.
    await helper.launch("deaf", "trap '' TERM; echo ready; sleep 30", kill_grace=60)
    await wait_ready(helper, "deaf")
    await helper.call("kill", run_id="deaf", grace=0.2)
    rep = await helper.wait_exit("deaf")
    assert rep["cancelled"] and (rep["exit_code"], rep["signal"]) == (-9, "SIGKILL")


async def test_probe_reports_absent_starting_running_exited_and_lost(
    helper: LocalHelper, tmp_path: Path
) -> None:
    assert (await helper.probe("nothing"))["state"] == "absent"
    gate = tmp_path / "gate"
    await helper.launch("done", "true")
    await helper.launch("crash", gate_command(gate))
    assert (await helper.wait_exit("done"))["state"] == "exited"
    assert (await helper.probe("done"))["exit_code"] == 0

    # A crash: the keeper (every run's supervisor) and its task die without a word.
    crashed = (await helper.wait_state("crash", "running")) and helper.started("crash")
    os.kill(crashed["supervisor_pid"], signal.SIGKILL)
    os.killpg(crashed["pgid"], signal.SIGKILL)
    lost = await helper.wait_state("crash", "lost")
    assert "supervisor" in lost["error"] and lost["exit_code"] is None
    assert (await helper.wait_exit("crash"))["state"] == "lost"

    # The next launch gets a new keeper.
    await helper.launch("live", gate_command(gate))
    running = await helper.wait_state("live", "running")
    assert running["pid"] == helper.started("live")["pid"] and running["log"] is None
    assert helper.started("live")["supervisor_pid"] != crashed["supervisor_pid"]

    # A run dir with no supervisor yet is starting, and lost once it is a minute old.
    orphan = helper.state_dir / "runs" / "orphan"
    orphan.mkdir()
    assert (await helper.probe("orphan"))["state"] == "starting"
    old = time.time() - 120
    os.utime(orphan, (old, old))
    assert (await helper.probe("orphan"))["state"] == "lost"

    gate.touch()
    assert (await helper.wait_exit("live"))["exit_code"] == 0


def fake_started(h: LocalHelper, run_id: str, **fields: object) -> None:
    """A run dir whose started.json names a supervisor (no exit.json), as left by a crash."""
    run = h.state_dir / "runs" / run_id
    run.mkdir()
    assert h.client is not None
    info = {"pid": None, "pgid": None, "supervisor_pid": os.getpid(), "started_at": "x",
            "boot_id": h.client.hello["boot_id"], "proc_start": my_start(), **fields}  # fmt: skip
    (run / "started.json").write_text(json.dumps(info))


def my_start() -> int:
    return int(Path(f"/proc/{os.getpid()}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])


async def test_liveness_checks_boot_id_and_pid_reuse(helper: LocalHelper) -> None:
    fake_started(helper, "alive")  # this test process stands in for a live supervisor
    fake_started(helper, "reused", proc_start=my_start() + 1)
    fake_started(helper, "rebooted", boot_id="another-boot")
    assert (await helper.probe("alive"))["state"] == "running"
    assert (await helper.probe("reused"))["state"] == "lost"
    rebooted = await helper.probe("rebooted")
    assert rebooted["state"] == "lost" and "rebooted" in rebooted["error"]


async def test_a_zombie_supervisor_counts_as_gone(helper: LocalHelper) -> None:
    # pid 1 does not always reap orphans: a dead supervisor may linger as a zombie.
    child = subprocess.Popen(["true"])

    async def zombie() -> bool:
        return Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"

    await eventually(zombie, what="a zombie")
    start = int(Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
    fake_started(helper, "zombie", supervisor_pid=child.pid, proc_start=start)
    try:
        assert (await helper.probe("zombie"))["state"] == "lost"
    finally:
        child.wait()


async def test_kill_never_signals_a_reused_group_number(helper: LocalHelper) -> None:
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        start = int(Path(f"/proc/{other.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
        fake_started(helper, "reused", supervisor_pid=None, pgid=other.pid, task_start=start + 1)
        fake_started(helper, "same", supervisor_pid=None, pgid=other.pid, task_start=start)
        assert (await helper.call("kill", run_id="reused", grace=0))["status"] == "exited"
        assert other.poll() is None
        assert (await helper.call("kill", run_id="same", grace=0))["status"] == "signalled"
        assert other.wait(15) == -signal.SIGKILL
    finally:
        other.kill()
        other.wait()


async def test_a_task_orphaned_by_its_supervisor_is_kept_and_killable(
    helper: LocalHelper, tmp_path: Path
) -> None:
    await helper.launch("orphan", gate_command(tmp_path / "gate"))
    await helper.wait_state("orphan", "running")
    started = helper.started("orphan")
    os.kill(started["supervisor_pid"], signal.SIGKILL)
    assert (await helper.wait_exit("orphan"))["state"] == "lost"
    assert live_group_members(started["pgid"]) != []
    assert (await helper.call("cleanup", runs=["orphan"]))["refused"] == ["orphan"]
    assert (await helper.call("kill", run_id="orphan", grace=0))["status"] == "signalled"

    async def group_gone() -> bool:
        return live_group_members(started["pgid"]) == []

    await eventually(group_gone, what="the orphaned group to end")
    assert (await helper.call("cleanup", runs=["orphan"]))["removed"] == 1


async def test_a_run_id_starts_at_most_one_process(helper: LocalHelper, tmp_path: Path) -> None:
    count = tmp_path / "count"
    cmd = f"echo started >> '{count}'"
    replies = await asyncio.gather(*(helper.launch("once", cmd) for _ in range(5)))
    assert sorted(r["status"] for r in replies) == ["exists"] * 4 + ["started"]
    await helper.wait_exit("once")
    again = await helper.launch("once", cmd)
    assert again["status"] == "exists" and again["run"]["state"] == "exited"
    assert count.read_text() == "started\n"


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "x" * 129, "sp ace", 5, None])
async def test_bad_run_ids_are_refused(helper: LocalHelper, bad: object) -> None:
    from dispatcher.errors import RemoteError

    with pytest.raises(RemoteError, match="bad run_id"):
        await helper.call("launch", run_id=bad, spec={"command": "true"})
    assert sorted(os.listdir(helper.state_dir / "runs")) == []


async def test_task_outlives_the_helper_and_a_new_helper_sees_its_exit(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    first = LocalHelper(tmp_path / "state")
    await first.start()
    await first.launch("long", gate_command(gate, "echo finished"))
    await first.wait_state("long", "running")
    task_pid = first.started("long")["pid"]
    assert await first.stop() == 0  # stdin closed: the helper is gone
    assert pid_running(task_pid)

    async with LocalHelper(tmp_path / "state") as second:
        assert (await second.probe("long"))["state"] == "running"  # and now watched
        gate.touch()
        rep = await second.wait_exit("long")
        assert rep["exit_code"] == 0 and log_text(rep) == "ready\nfinished\n"
    assert not pid_running(task_pid)


async def test_setup_runs_first_and_its_failure_stops_the_command(
    helper: LocalHelper, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    await helper.launch("ok", 'echo "FOO=$FOO"', setup="export FOO=bar")
    await helper.launch("bad", f"touch '{marker}'", setup="echo preparing; false")
    assert log_text(await helper.wait_exit("ok")) == "FOO=bar\n"
    rep = await helper.wait_exit("bad")
    assert rep["exit_code"] == 126
    assert log_text(rep) == "preparing\nlabtasker: setup failed (exit 1): echo preparing; false\n"
    assert not marker.exists()


async def test_workdir_is_expanded_and_created_private(helper: LocalHelper, tmp_path: Path) -> None:
    await helper.launch("wd", "pwd", workdir="~/exp/a/b")
    await helper.launch("abs", "pwd", workdir=str(tmp_path / "abs"))
    made = tmp_path / "home" / "exp" / "a" / "b"
    assert log_text(await helper.wait_exit("wd")) == f"{made}\n"
    assert log_text(await helper.wait_exit("abs")) == f"{tmp_path / 'abs'}\n"
    for d in (made, made.parent, made.parent.parent, tmp_path / "abs"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


async def test_an_uncreatable_workdir_is_an_error_with_exit_127(
    helper: LocalHelper, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    await helper.launch("nowd", "echo never", workdir=str(tmp_path / "file" / "sub"))
    rep = await helper.wait_exit("nowd")
    assert rep["exit_code"] == 127 and "cannot create workdir" in rep["error"]
    assert str(tmp_path / "file" / "sub") in rep["error"]
    assert "cannot create workdir" in log_text(rep)


async def test_env_values_arrive_intact(helper: LocalHelper) -> None:
    env = {
        "SPACES": "a value with  spaces ",
        "QUOTES": 'it\'s "quoted" $HOME `date` \\n',
        "UNICODE": "naïve ✓ 数据",
        "CUDA_VISIBLE_DEVICES": "",
    }
    names = [*env, "LABTASKER_RUN_ID", "LABTASKER_TASK_ID"]
    dump = (
        f"import json, os; json.dump({{k: os.environ.get(k) for k in {names!r}}}, "
        "open(os.environ['LABTASKER_RESULT'], 'w'))"
    )
    await helper.launch(
        "env", f"{shlex.quote(sys.executable)} -c {shlex.quote(dump)}", env=env, task_id=42
    )
    rep = await helper.wait_exit("env")
    assert rep["result"] == {**env, "LABTASKER_RUN_ID": "env", "LABTASKER_TASK_ID": "42"}


async def test_state_files_are_private(helper: LocalHelper) -> None:
    await helper.launch("modes", "echo hi")
    await helper.wait_exit("modes")
    seen = 0
    for root, _dirs, files in os.walk(helper.state_dir):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600, name
            seen += 1
    assert seen >= 4  # helper copy, started.json, exit.json, output.log


async def test_big_logs_are_not_inline_but_readable_in_chunks(helper: LocalHelper) -> None:
    await helper.launch("small", "head -c 60000 /dev/zero | tr '\\0' x")
    await helper.launch("big", "head -c 200000 /dev/zero | tr '\\0' y")
    assert log_text(await helper.wait_exit("small")) == "x" * 60000
    rep = await helper.wait_exit("big")
    assert rep["log"] is None and rep["log_size"] == 200000
    data, offset = b"", 0
    while offset < rep["log_size"]:
        chunk = await helper.call("read", run_id="big", offset=offset, size=65536)
        data += base64.b64decode(chunk["data"])
        offset = len(data)
        assert chunk["size"] == 200000
    assert data == b"y" * 200000


async def test_probe_of_many_runs_stays_within_the_inline_budget(helper: LocalHelper) -> None:
    ids = [f"log{i}" for i in range(20)]
    for run_id in ids:
        await helper.launch(run_id, "head -c 65000 /dev/zero | tr '\\0' z")
    for run_id in ids:
        await helper.wait_exit(run_id)
    reports = (await helper.call("probe", runs=ids))["runs"]
    inline = [r for r in reports.values() if r["log"] is not None]
    omitted = [r for r in reports.values() if r["inline_omitted"]]
    assert 0 < len(inline) < len(ids) and len(inline) + len(omitted) == len(ids)
    assert json.dumps(reports).__len__() < 2 * 1024 * 1024


async def test_a_plain_command_is_executed_without_a_shell(
    helper: LocalHelper, tmp_path: Path
) -> None:
    script = tmp_path / "argv.py"
    script.write_text(
        "import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'pwd': os.environ.get('PWD'), 'cwd': os.getcwd()},"
        " open(os.environ['LABTASKER_RESULT'], 'w'))\n"
    )
    work = tmp_path / "work"
    await helper.launch("plain", f"{sys.executable} {script} --lr=0.1 a\tb%", workdir=str(work))
    rep = await helper.wait_exit("plain")
    # Words split as bash splits them; PWD set as bash would have set it.
    assert rep["result"] == {"argv": ["--lr=0.1", "a", "b%"], "pwd": str(work), "cwd": str(work)}
    await helper.launch("missing", "no-such-program-x --flag")
    rep = await helper.wait_exit("missing")
    assert rep["exit_code"] == 127 and "no-such-program-x: command not found" in log_text(rep)
    assert "command not found" in rep["error"]
    (tmp_path / "noexec").write_text("#!/bin/sh\n")
    await helper.launch("denied", str(tmp_path / "noexec"))
    rep = await helper.wait_exit("denied")
    assert rep["exit_code"] == 126 and "permission denied" in log_text(rep)
    # Anything with shell syntax still goes through bash.
    await helper.launch("shell", f"{sys.executable} {script} $LABTASKER_RUN_ID 'x y'")
    assert (await helper.wait_exit("shell"))["result"]["argv"] == ["shell", "x y"]


async def test_launches_starts_many_runs_in_one_request(helper: LocalHelper) -> None:
    runs = [
        {"run_id": "b1", "spec": {"command": "exit 3"}},
        {"run_id": "b2", "spec": {"command": "  "}},
        {"run_id": "b3", "spec": {"command": "echo three"}},
    ]
    got = (await helper.call("launches", runs=runs))["runs"]
    assert got["b1"]["status"] == got["b3"]["status"] == "started"
    assert got["b2"]["status"] == "error" and "spec.command" in got["b2"]["error"]
    assert (await helper.wait_exit("b1"))["exit_code"] == 3
    assert log_text(await helper.wait_exit("b3")) == "three\n"
    again = (await helper.call("launches", runs=runs[:1]))["runs"]["b1"]
    assert again["status"] == "exists" and again["run"]["exit_code"] == 3
    with pytest.raises(RemoteError, match="bad run_id"):
        await helper.call("launches", runs=[{"run_id": "../x", "spec": {"command": "true"}}])
