"""Shared fixtures: a clean environment for every test, and real sshd hosts on loopback.

Sections: environment, sshd hosts. Tests that use ``sshd_hosts`` (directly or through
``ssh_home``) get the ``sshd`` mark, so ``-m "not sshd"`` runs the suite without them; those that
use ``slurm_cluster`` also get the ``slurm`` mark.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd import SshdHosts, sshd_binary

# -- environment -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's agent and labtasker settings must not leak into tests."""
    for name in list(os.environ):
        if name == "SSH_AUTH_SOCK" or name.startswith("LABTASKER_"):
            monkeypatch.delenv(name)


# -- sshd hosts --------------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "sshd_hosts" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.sshd)
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def sshd_hosts() -> Iterator[SshdHosts]:
    """The session's sshd hosts (``tests/sshd.py``): gpu2, gpu1, cpu, jump, behind, nfs1, nfs2.

    Without sshd this fails under CI (CI=true) and skips elsewhere.
    """
    if sshd_binary() is None:
        reason = "OpenSSH's sshd is not installed (apt-get install openssh-server openssh-client)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    hosts = SshdHosts.start()
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(autouse=True)
def _heal_sshd_hosts(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the hosts, undo its faults, so test order never matters."""
    hosts = None
    if "sshd_hosts" in request.fixturenames:
        hosts = request.getfixturevalue("sshd_hosts")
    yield
    if hosts is not None:
        hosts.heal()


@pytest.fixture
def ssh_home(sshd_hosts: SshdHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME (for this process and its children) with .ssh/config naming every host by alias
    and a known_hosts that trusts them; the ssh-agent is out of reach."""
    home = sshd_hosts.write_client_home(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    return home
