"""Sixteen hosts, one unreachable and one stalled: the other fourteen are not slowed; and
fourteen hosts behind one ProxyJump host stay within its sshd's MaxStartups.

Sixteen sshd hosts of their own (started in parallel, one user behind all of them, as an NFS
home is), not the session's standard ones. h15 refuses connections (its sshd is stopped); h16
accepts TCP but never answers (its listening sshd is SIGSTOPped), with a connect timeout far
longer than the test. Every task runs and finishes on the healthy hosts while h16's connection
is still pending, ``status`` names both bad hosts and why, and no task is lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.transport.transports import JUMP_HANDSHAKES
from tests.integration.conftest import Lab, finish, new_lab, wait
from tests.sshd import HostPlan, SshdHost, SshdHosts, proc_table, sshd_binary

pytestmark = pytest.mark.sshd

COUNT = 16
HEALTHY = [f"h{i}" for i in range(1, COUNT - 1)]
REFUSING, STALLED = f"h{COUNT - 1}", f"h{COUNT}"
#: Far beyond the test's run time: h16's connection stays pending for the whole test.
CONNECT_TIMEOUT = 600
TASKS = 2 * len(HEALTHY)


@pytest.fixture(scope="module")
def sixteen() -> Iterator[SshdHosts]:
    """Sixteen hosts (h1..h16) and `bastion` (MaxStartups 8:100:8), each on its own loopback
    address, started in parallel."""
    if sshd_binary() is None:
        reason = "OpenSSH's sshd is not installed (apt-get install openssh-server openssh-client)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    plans = [HostPlan(f"h{i}", "m", None) for i in range(1, COUNT + 1)]
    hosts = SshdHosts.start([*plans, HostPlan("bastion", "m", None)])
    try:
        bastion = hosts["bastion"]  # as a stock sshd, with a MaxStartups small enough to reach
        text = bastion.config_path.read_text()
        text = text.replace("MaxStartups 100:30:200", "MaxStartups 8:100:8")
        bastion.config_path.write_text(text)
        bastion.stop_listener()
        bastion.start_listener()
        yield hosts
    finally:
        hosts.close()


@pytest.fixture
def lab16(sixteen: SshdHosts, tmp_path: Path) -> Iterator[Lab]:
    """A controller directory whose client HOME reaches the sixteen hosts by alias."""
    home = sixteen.write_client_home(tmp_path / "home")
    try:
        with new_lab(home, sixteen, tmp_path) as lab:
            yield lab
    finally:
        sixteen.heal()


@contextlib.contextmanager
def stalled_sshd(host: SshdHost) -> Iterator[None]:
    """SIGSTOP the host's listening sshd: the kernel still accepts TCP, nobody answers."""
    pid = host.listener_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    wait(lambda: proc_table()[pid].state == "T", f"{host.alias}: sshd stopped")
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_bad_hosts_do_not_slow_the_others(lab16: Lab) -> None:
    refusing, stalled = lab16.hosts[REFUSING], lab16.hosts[STALLED]
    slow = {name: {"connect_timeout": CONNECT_TIMEOUT} for name in (*HEALTHY, REFUSING, STALLED)}
    toml = lab16.hosts_toml(*HEALTHY, REFUSING, STALLED, **slow)
    grid = "i=" + ",".join(map(str, range(TASKS)))
    ids = lab16.add_cmd('echo "task %{i} on $EXPERIMENT_HOST"', "--grid", grid)
    refusing.stop_listener()
    with stalled_sshd(stalled):
        proc = lab16.start("dispatch", "--hosts", str(toml))
        wait(lambda: connection_open(stalled), f"{STALLED}: dispatch's TCP connection open")
        wait(
            lambda: all(t["state"] == "succeeded" for t in lab16.tasks()),
            "every task succeeded on the healthy hosts",
        )
        # The ordering check: all of that happened while h16's connection was still pending.
        assert proc.poll() is None, finish(proc)
        assert connection_open(stalled)
        lines = wait(lambda: bad_host_lines(lab16), "status names both bad hosts")
        assert isinstance(lines, dict)
        assert "no answer yet" in lines[STALLED], lines
        assert "refused" in lines[REFUSING].lower(), lines
        proc.send_signal(signal.SIGINT)
        code, out, err = finish(proc)
    tasks = lab16.tasks()
    assert sorted(t["id"] for t in tasks) == sorted(ids)
    assert {t["state"] for t in tasks} == {"succeeded"}, tasks
    assert {t["host"] for t in tasks} <= set(HEALTHY)
    assert code == 130, (out, err)  # interrupted (Ctrl-C), after every task had finished


def connection_open(host: SshdHost) -> bool:
    """Whether a TCP connection to the host's sshd port is established (accepted by the
    kernel, unanswered by the stopped sshd), as /proc/net/tcp lists it."""
    target = f"{socket.inet_aton(host.address)[::-1].hex().upper()}:{host.port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[2] == target and r.split()[3] == "01" for r in rows)  # ESTABLISHED


def bad_host_lines(lab: Lab) -> dict[str, str] | None:
    """``status``'s lines about h15 and h16 (by host), once both say why they are bad."""
    found = {}
    for line in lab.ok("status").splitlines():
        for name in (REFUSING, STALLED):
            if line.startswith(f"host {name}: "):
                found[name] = line
    refused = "unreachable (" in found.get(REFUSING, "")
    return found if refused and "connecting for" in found.get(STALLED, "") else None


def test_hosts_behind_one_jump_host_stay_within_its_max_startups(lab16: Lab) -> None:
    # The bastion's sshd drops every unauthenticated connection beyond 8 (MaxStartups 8:100:8);
    # dispatch connects to all 14 hosts behind it at once, but sets up at most
    # JUMP_HANDSHAKES connections through it at a time.
    assert JUMP_HANDSHAKES <= 8
    bastion = lab16.hosts["bastion"]
    vias = [f"via{i}" for i in range(1, len(HEALTHY) + 1)]
    config = lab16.home / ".ssh" / "config"
    blocks = "".join(
        f"Host via{i}\n    HostName {h.address}\n    Port {h.port}\n    User {h.user}\n"
        f"    IdentityFile {lab16.hosts.client_key}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {lab16.home / '.ssh' / 'known_hosts'}\n    ProxyJump bastion\n"
        for i, h in enumerate((lab16.hosts[name] for name in HEALTHY), start=1)
    )
    config.write_text(blocks + config.read_text())
    log_start = len(bastion.log_text())
    toml = lab16.hosts_toml(*vias)
    ids = lab16.add_cmd('echo "task %{i} on $EXPERIMENT_HOST"', "--grid", f"i={','.join(vias)}")
    done = lab16.run("dispatch", "--hosts", str(toml))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert {t["state"] for t in lab16.tasks()} == {"succeeded"} and len(ids) == len(vias)
    # Every host connected at its first attempt: none was dropped and retried.
    about_hosts = [line for line in done.stdout.splitlines() if line.startswith("via")]
    assert sorted(about_hosts) == sorted(f"{v}: connected" for v in vias), done.stdout
    assert "past MaxStartups" not in bastion.log_text()[log_start:]
