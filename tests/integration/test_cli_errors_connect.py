"""Hosts that cannot be reached or trusted, through the real ``hosts check`` and ``dispatch``.

Unresolvable alias, refused connection, timeout, refused key, unknown and changed host keys:
``hosts check`` prints one row per host naming the problem and exits 1; ``dispatch`` whose only
host is unusable exits 1 with one ``Error:`` line per host problem and leaves the tasks pending.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.integration.conftest import Lab
from tests.integration.test_cli_errors_config import ONE, error_lines, queue_rows


def add_alias(lab: Lab, alias: str, **options: object) -> None:
    """Append a ``Host alias`` block to the lab's ~/.ssh/config, based on gpu1's settings."""
    gpu1 = lab.hosts.gpu1
    settings: dict[str, object] = {
        "HostName": gpu1.address,
        "Port": gpu1.port,
        "User": gpu1.user,
        "IdentityFile": lab.hosts.client_key,
        "IdentitiesOnly": "yes",
        "UserKnownHostsFile": lab.home / ".ssh" / "known_hosts",
        **options,
    }
    block = "".join(f"    {k} {v}\n" for k, v in settings.items())
    config = lab.home / ".ssh" / "config"
    # First match wins in ssh_config: the new block goes before the existing ones.
    config.write_text(f"Host {alias}\n{block}\n{config.read_text()}")


def host_toml(lab: Lab, name: str, **extra: object) -> Path:
    """A hosts.toml with one host; values are written as TOML literals."""
    lines = [f'[hosts."{name}"]', f'workdir = "{lab.shared}"', "slots = 1"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return lab.write_hosts("\n".join(lines) + "\n")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port where the kernel accepts TCP connections but nobody ever speaks SSH."""
    with socket.socket() as s:
        s.bind(("127.0.0.3", 0))
        s.listen(8)
        yield s.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.3", 0))
        return int(s.getsockname()[1])


def stranger_key(lab: Lab) -> Path:
    key = lab.root / "id_stranger"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    key.chmod(0o600)
    return key


def setup_case(lab: Lab, case: str, silent: int) -> tuple[Path, list[str]]:
    """Make ``case`` happen for a host; (hosts.toml, fragments its message must hold)."""
    gpu1 = lab.hosts.gpu1
    if case == "unresolvable":
        return host_toml(lab, "nosuchhost.invalid"), [
            "nosuchhost.invalid: cannot resolve host name 'nosuchhost.invalid'",
            "not in ~/.ssh/config and not in DNS",
            "check the Host entry",
        ]
    if case == "refused":
        port = free_port()
        return host_toml(lab, "dead", ssh=f'"127.0.0.3:{port}"'), [
            f"dead (127.0.0.3:{port}): connection refused; is sshd running?"
        ]
    if case == "timeout":
        return host_toml(lab, "mute", ssh=f'"127.0.0.3:{silent}"', connect_timeout=0.5), [
            f"mute (127.0.0.3:{silent}): no answer within 0.5 s",
            "is the host up and reachable",
        ]
    if case == "auth":
        key = stranger_key(lab)
        add_alias(lab, "stranger", IdentityFile=key)
        return host_toml(lab, "stranger"), [
            f"user '{gpu1.user}' was refused",
            f"keys tried: {key}",
            "ssh-copy-id stranger",
        ]
    if case == "unknown-key":
        empty = lab.root / "known_hosts_empty"
        empty.write_text("")
        add_alias(lab, "fresh", UserKnownHostsFile=empty)
        return host_toml(lab, "fresh"), [
            "fresh (127.0.0.3:",
            "host key not in known_hosts",
            "run `ssh fresh` once to check and accept it, or pass --accept-new-host-keys",
        ]
    assert case == "changed-key"
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known = lab.root / "known_hosts_changed"
    known.write_text(f"[{gpu1.address}]:{gpu1.port} {other}")
    add_alias(lab, "moved", UserKnownHostsFile=known)
    return host_toml(lab, "moved"), [
        "moved (127.0.0.3:",
        "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!",
        "someone could be eavesdropping",
        f"ssh-keygen -R '[{gpu1.address}]:{gpu1.port}'",
    ]


CASES = ["unresolvable", "refused", "timeout", "auth", "unknown-key", "changed-key"]


@pytest.mark.parametrize("case", CASES)
def test_hosts_check_names_the_problem_in_the_hosts_row(
    lab: Lab, case: str, silent_port: int
) -> None:
    hosts, fragments = setup_case(lab, case, silent_port)
    done = lab.run("hosts", "check", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout.count(" FAIL ") == 1, done.stdout
    # The table wraps a long problem inside its column: read the text with spaces collapsed.
    text = " ".join(done.stdout.split())
    for fragment in fragments:
        assert fragment in text, (fragment, done.stdout)


@pytest.mark.parametrize("case", CASES)
def test_dispatch_with_its_only_host_unusable_says_why_and_leaves_tasks_pending(
    lab: Lab, case: str, silent_port: int
) -> None:
    hosts, fragments = setup_case(lab, case, silent_port)
    name = hosts.read_text().split('"')[1]
    (task,) = lab.add("--args", ONE)
    before = queue_rows(lab)
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    # One progress line on stdout for the host problem as it happens ...
    progress = [
        line for line in done.stdout.splitlines() if line.startswith((f"{name} ", f"{name}:"))
    ]
    assert len(progress) == 1, done.stdout
    # ... then the summary on stderr: the host's problem, then the task it holds back.
    problem, stuck = error_lines(done)
    assert problem == progress[0]
    for fragment in fragments:
        assert fragment in problem, (fragment, problem)
    assert stuck.startswith(f"task {task} cannot be placed: ") and f"{name} unreachable" in stuck
    assert stuck.endswith("once that is fixed (`labtasker hosts check` shows when)"), stuck
    # The host is named once, not again inside its own error.
    assert stuck.count(f"{name} unreachable") == 1 and f"({name}" not in stuck, stuck
    after = queue_rows(lab)
    assert [t["state"] for t in after] == ["pending"]
    assert strip_reason(after) == strip_reason(before)
    assert f"{name} unreachable" in after[0]["reason"]


def strip_reason(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without ``reason``: dispatch records why a pending task waits, and nothing else."""
    return [{k: v for k, v in row.items() if k != "reason"} for row in rows]


def test_changed_key_is_refused_even_with_accept_new_host_keys(lab: Lab, silent_port: int) -> None:
    hosts, _ = setup_case(lab, "changed-key", silent_port)
    known = lab.root / "known_hosts_changed"
    before = known.read_text()
    lab.add("--args", ONE)
    for command in (["hosts", "check"], ["dispatch"]):
        done = lab.run(*command, "--hosts", str(hosts), "--accept-new-host-keys")
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in done.stdout + done.stderr
    assert known.read_text() == before


def test_accept_new_host_keys_records_an_unknown_key_once(lab: Lab, silent_port: int) -> None:
    hosts, _ = setup_case(lab, "unknown-key", silent_port)
    done = lab.run("hosts", "check", "--hosts", str(hosts), "--accept-new-host-keys")
    assert done.returncode == 0, (done.stdout, done.stderr)
    gpu1 = lab.hosts.gpu1
    known = (lab.root / "known_hosts_empty").read_text()
    assert known == f"[{gpu1.address}]:{gpu1.port} {gpu1.host_key}\n"
    assert lab.run("hosts", "check", "--hosts", str(hosts)).returncode == 0
