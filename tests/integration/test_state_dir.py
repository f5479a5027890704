"""A ``state_dir`` labtasker must not take over is refused, never chmod-ed, through the real CLI.

The helper makes its state dir private (0700). Done to a home directory, that locks others out of
it; done to another user's directory, it takes what is not ours; in a directory others can write
to (or reach through a symlink they own), others can place the files the helper trusts. Each case
is one line from ``hosts check`` and from ``dispatch`` naming the host, the path and the fix, and
the directory keeps its mode.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Lab
from tests.integration.test_cli_errors_config import ONE, error_lines
from tests.integration.test_cli_errors_remote import check_row

FIX = "set state_dir in hosts.toml to a directory of its own, like ~/.labtasker"
root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="hosts log in as other users only when the tests run as root"
)


@pytest.fixture
def place(lab: Lab) -> Iterator[Path]:
    """A directory every host's user can look into; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="state-dirs-", dir=lab.hosts.base))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def refused(lab: Lab, state_dir: str, shown: Path, why: str) -> None:
    """``hosts check`` and ``dispatch`` on ``cpu`` both refuse ``state_dir`` (resolved to
    ``shown``) for ``why``, and leave its mode as it was."""
    before = mode(shown)
    hosts = lab.hosts_toml("cpu", cpu={"state_dir": state_dir})
    fragments = (f"cpu: state_dir {state_dir} ({shown}) {why}", FIX)
    check_row(lab, hosts, *fragments)
    (task,) = lab.add("--args", ONE)
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    problem, stuck = error_lines(done)  # the host's problem, then the task it holds back
    assert all(f in problem for f in fragments), problem
    assert stuck.startswith(f"task {task} cannot be placed: "), stuck
    assert "cpu unreachable" in stuck, stuck  # shortened: the problem line above says why
    assert lab.task(task)["state"] == "pending"
    assert mode(shown) == before, oct(mode(shown))
    assert not (shown / "runs").exists() and not list(shown.glob("helper-*.py"))


def test_a_home_directory_is_refused_and_left_as_it_was(lab: Lab) -> None:
    home = lab.hosts.cpu.home
    refused(lab, "~", home, "is your home directory or holds it")


def test_a_directory_above_the_home_is_refused(lab: Lab) -> None:
    parent = lab.hosts.cpu.home.parent
    refused(lab, str(parent), parent, "is your home directory or holds it")


@root_only
def test_another_users_directory_is_refused(lab: Lab, place: Path) -> None:
    theirs = place / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, lab.hosts.gpu1.uid, lab.hosts.gpu1.uid)
    uid, mine = lab.hosts.gpu1.uid, lab.hosts.cpu.uid
    refused(lab, str(theirs), theirs, f"belongs to uid {uid}, not to you (uid {mine})")


def test_a_directory_others_can_write_to_is_refused(lab: Lab, place: Path) -> None:
    shared = place / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    os.chown(shared, lab.hosts.cpu.uid, -1)
    refused(lab, str(shared), shared, "is writable by other users")


@root_only
def test_a_symlink_another_user_owns_is_refused(lab: Lab, place: Path) -> None:
    # The target is the host user's own private dir: only the link's owner is wrong.
    target = place / "target"
    target.mkdir(mode=0o700)
    os.chown(target, lab.hosts.cpu.uid, -1)
    link = place / "link"
    link.symlink_to(target)  # owned by root, as the tests run
    refused(lab, str(link), target, "is a symbolic link owned by uid 0")


def test_a_symlink_of_ones_own_to_ones_own_directory_is_used(lab: Lab, place: Path) -> None:
    # ~/.labtasker -> a larger disk is a common set-up on lab servers.
    target = place / "target"
    target.mkdir(mode=0o755)
    link = place / "link"
    link.symlink_to(target)
    os.chown(target, lab.hosts.cpu.uid, -1)
    os.chown(link, lab.hosts.cpu.uid, -1, follow_symlinks=False)
    hosts = lab.hosts_toml("cpu", cpu={"state_dir": str(link)})
    (task,) = lab.add("--args", ONE)
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert lab.task(task)["state"] == "succeeded"
    assert mode(target) == 0o700 and list(target.glob("helper-*.py"))
