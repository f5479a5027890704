"""A host whose disk fills up while a task writes its log, through the real ``dispatch``.

The host's ``state_dir`` (where run directories and logs live) sits on a 256 KiB tmpfs that only
that host sees. A task printing 10 MB must end failed with a reason naming ENOSPC and the run's
directory; dispatch must finish, the host must stay in use (its next task succeeds once the full
run is cleaned up), and tasks on other hosts must run as usual.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Lab


@pytest.fixture
def tiny_disk(lab: Lab) -> Iterator[Path]:
    """A 256 KiB tmpfs that host ``cpu`` sees (in its mount namespace); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    host = lab.hosts.cpu
    path = Path(tempfile.mkdtemp(prefix="tiny-disk-", dir=lab.hosts.base))
    path.chmod(0o755)
    options = "size=256k,mode=0777"  # every host's user may write there
    mount = host.in_mount_namespace(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs on this machine: {done.stderr.strip()}")
    try:
        yield path
    finally:
        umount = host.in_mount_namespace(["umount", "--lazy", str(path)])
        subprocess.run(umount, capture_output=True, check=True)
        path.rmdir()


def test_a_full_disk_fails_the_task_with_enospc_and_spares_the_host(
    lab: Lab, tiny_disk: Path
) -> None:
    state = tiny_disk / "state"
    hosts = lab.hosts_toml("cpu", "gpu1", cpu={"state_dir": str(state)})
    # One task at a time on cpu: the one after the flood must find the disk freed, not full.
    hosts.write_text(hosts.read_text().replace("slots = 2", "slots = 1"))

    def add(cmd: str, *args: str) -> int:
        out = json.loads(lab.ok("queue", "add", "--json", "--cmd", cmd, *args))
        (task,) = out["ids"] if isinstance(out, dict) else out
        return int(task)

    # --gpus 0 tasks can only go to cpu (gpu1 offers no slots); the flood is placed first.
    noisy = add("yes labtasker | head -c 10000000", "--gpus", "0", "--priority", "10")
    small = add("echo small-task-done", "--gpus", "0")
    elsewhere = lab.add("--args", '{"p1": 1, "p2": "a", "p3": 0.5}', "--gpus", "1")
    elsewhere += lab.add("--args", '{"p1": 2, "p2": "b", "p3": 1.5}', "--gpus", "1")

    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)  # one task failed
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert "unreachable" not in done.stdout and "suspended" not in done.stdout, done.stdout

    row = lab.task(noisy)
    assert row["state"] == "failed" and row["host"] == "cpu", row
    reason = row["reason"] or ""
    assert "no space left on device (ENOSPC)" in reason and str(state / "runs") in reason, row
    assert "set state_dir to a larger disk" in reason, row
    assert "(the task ended with exit 1)" in reason, row
    # The host was not declared dead: once the full run was cleaned up, it ran the next task.
    row = lab.task(small)
    assert (row["state"], row["host"]) == ("succeeded", "cpu"), row
    assert "small-task-done" in lab.ok("logs", str(small))
    for task in elsewhere:
        row = lab.task(task)
        assert (row["state"], row["host"]) == ("succeeded", "gpu1"), row
    # The cut log was still collected: what fitted on the disk, no more.
    log = lab.ok("logs", str(noisy))
    assert log.startswith("labtasker\nlabtasker\n") and len(log) < 256 * 1024
