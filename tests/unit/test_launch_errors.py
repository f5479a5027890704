"""A launch the host refuses is the host's fault once, not forever: the task moves on (to another
host, or the same one again) at most ``MAX_LOSSES`` times, then fails with the last error and
``dispatch`` ends. Through the real CLI on a local host whose snapshot cannot be sent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dispatcher.core.models import MAX_LOSSES


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_launch_that_fails_every_time_fails_the_task_instead_of_looping(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "hosts.toml").write_text("[hosts.local]\n")
    (project / "t.py").write_text("print('hi')\n")
    assert run(project, "queue", "add", "--gpus", "0", "--", "python", "t.py").returncode == 0
    shutil.rmtree(project / ".labtasker" / "snapshots")  # the snapshot can no longer be sent
    done = run(project, "dispatch")
    assert done.returncode == 1, (done.stdout, done.stderr)
    (task,) = json.loads(run(project, "queue", "ls", "--json").stdout)
    assert task["state"] == "failed", task
    assert task["attempt"] == MAX_LOSSES, task  # tried a bounded number of times, not forever
    assert task["reason"].startswith(f"could not launch {MAX_LOSSES} times (last on local: ")
    assert "Traceback" not in done.stdout + done.stderr
    assert "Done: 0 succeeded, 1 failed" in done.stdout, done.stdout
