"""Hosts that answer but cannot run tasks as configured, through the real CLI.

No usable Python, an old Python, a workdir that cannot be written (for root too), a failing
``setup`` line, ``gpus = "auto"`` without nvidia-smi, a pinned GPU index that does not exist, and
a task asking for more GPUs than any host has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Lab
from tests.integration.test_cli_errors_config import ONE, error_lines, queue_rows
from tests.sshd import SshdHost

# Runs the real interpreter, but tells the code it runs that it is Python 3.6.9, as an old
# distribution's python3 would: `python3 --version` and the helper's own version check see it.
OLD_PYTHON = """#!/bin/sh
if [ "$1" = "--version" ] || [ "$1" = "-V" ]; then echo "Python 3.6.9"; exit 0; fi
shift
exec /usr/bin/python3 -c 'import sys
sys.version_info = (3, 6, 9, "final", 0)
sys.version = "3.6.9 (default)"
code = sys.argv.pop(1)
exec(compile(code, "<string>", "exec"))' "$@"
"""


@pytest.fixture
def old_python(lab: Lab) -> Iterator[SshdHost]:
    """gpu1 whose ``python3`` (first on its PATH) is 3.6.9; removed again afterwards."""
    host = lab.hosts.gpu1
    stub = host.fake_bin / "python3"
    stub.write_text(OLD_PYTHON)
    stub.chmod(0o755)
    try:
        yield host
    finally:
        stub.unlink()


def check_row(lab: Lab, hosts: Path, *fragments: str) -> None:
    """``hosts check`` fails on exactly one host, whose row holds every fragment."""
    done = lab.run("hosts", "check", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout.count(" FAIL ") == 1, done.stdout
    text = " ".join(done.stdout.split())  # long problems wrap inside their column
    for fragment in fragments:
        assert fragment in text, (fragment, done.stdout)


def dispatch_stuck(lab: Lab, hosts: Path, host: str, *fragments: str) -> None:
    """``dispatch`` exits 1 naming ``host``'s problem and the task it holds back on stderr; the
    one task stays pending, with the problem as its reason."""
    (task,) = lab.add("--args", ONE)
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    problem, stuck = error_lines(done)  # the host's problem, then the task it holds back
    assert problem.startswith(f"{host}: "), problem
    assert stuck.startswith(f"task {task} cannot be placed: "), stuck
    (row,) = queue_rows(lab)
    assert row["state"] == "pending" and row["attempt"] == 0
    for fragment in fragments:
        assert fragment in stuck, (fragment, stuck)
        assert fragment in row["reason"], (fragment, row["reason"])


def test_no_python_under_the_configured_name(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu1", gpu1={"python": "python3.99"})
    fragments = ("gpu1: no usable Python >= 3.8", "python3.99", "set the host's python")
    check_row(lab, hosts, *fragments)
    dispatch_stuck(lab, hosts, "gpu1", "gpu1 unreachable (no usable Python >= 3.8")


def test_python_older_than_3_8(lab: Lab, old_python: SshdHost) -> None:
    hosts = lab.hosts_toml("gpu1")
    check_row(lab, hosts, "gpu1: no usable Python >= 3.8", "found 3.6.9")
    dispatch_stuck(lab, hosts, "gpu1", "gpu1 unreachable (no usable Python >= 3.8")


def test_a_workdir_that_cannot_be_made_even_by_root(lab: Lab) -> None:
    blocker = lab.shared / "a-file"
    blocker.write_text("a regular file: nothing, not even root, can make a directory under it")
    blocker.chmod(0o644)
    workdir = blocker / "sub"
    hosts = lab.hosts_toml("gpu1", gpu1={"workdir": str(workdir)})
    check_row(lab, hosts, f"workdir {workdir} is not writable", "is not a writable directory")
    (task,) = lab.add("--args", ONE)
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    row = lab.task(task)
    assert row["state"] in ("failed", "pending"), row
    assert str(workdir) in (row["reason"] or ""), row


def test_a_failing_setup_line_fails_the_task_not_the_host(lab: Lab) -> None:
    setup = "echo setup-broke-here >&2; exit 4"
    hosts = lab.hosts_toml("cpu", cpu={"setup": setup})
    first, second = lab.add("--args", ONE, "--args", '{"p1": 2, "p2": "b", "p3": 1}')
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    for task in (first, second):  # the host kept taking tasks: it was not declared dead
        row = lab.task(task)
        assert row["state"] == "failed" and row["host"] == "cpu", row
        assert "setup-broke-here" in lab.ok("logs", str(task))
    assert "unreachable" not in done.stdout and "suspended" not in done.stdout


def test_gpus_auto_without_nvidia_smi_skips_the_host(lab: Lab) -> None:
    hosts = lab.hosts_toml("cpu", cpu={"gpus": "auto"})
    fragments = ('gpus = "auto" but', "nvidia-smi", "set gpus = 0 for a CPU-only host")
    check_row(lab, hosts, *fragments)
    dispatch_stuck(lab, hosts, "cpu", "cpu: ", 'gpus = "auto" but')


def test_a_pinned_gpu_index_that_does_not_exist(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu2", gpu2={"gpus": [0, 7]})
    fragment = "GPU index 7 does not exist (nvidia-smi lists: 0, 1)"
    check_row(lab, hosts, fragment)
    dispatch_stuck(lab, hosts, "gpu2", fragment)


def test_more_gpus_than_any_host_has_is_shown_in_queue_ls_and_status(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu2", "gpu1")
    (big,) = lab.add("--args", ONE, "--gpus", "3")
    before = queue_rows(lab)
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    why = "needs 3 GPUs on one host; the largest host (gpu2) has 2"
    (line,) = error_lines(done)  # both hosts are fine: the task is the only problem
    assert line.startswith(f"task {big} cannot be placed: {why}; "), line
    assert "with fewer --gpus" in line, line
    (row,) = lab.cli_tasks()
    assert row["state"] == "pending" and row["reason"] == why
    assert {**row, "reason": None} == {**before[0], "reason": None}
    assert why in " ".join(lab.ok("status").split())
