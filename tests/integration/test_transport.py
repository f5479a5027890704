"""SSHTransport and LocalTransport against real sshd hosts: commands, config, keys, faults."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from dispatcher.errors import (
    AuthError,
    ConnectError,
    ConnectionLostError,
    HostKeyError,
    TransportError,
)
from dispatcher.transport.transports import (
    STDERR_LIMIT,
    LocalTransport,
    Process,
    SSHOptions,
    SSHTransport,
)
from tests.sshd import BEHIND_NAME, FakeApp, FakeGpu, SshdHost, SshdHosts, poll

pytestmark = pytest.mark.sshd

GPU_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu",
    "--format=csv,noheader,nounits",
]
APPS_QUERY = [
    "nvidia-smi",
    "--query-compute-apps=gpu_uuid,pid,used_memory,process_name",
    "--format=csv,noheader,nounits",
]
Connect = Callable[..., Awaitable[SSHTransport]]


@pytest.fixture
async def connect(ssh_home: Path) -> AsyncIterator[Connect]:
    """``await connect(name, target=None, **SSHOptions fields)``: a connected SSHTransport,
    closed after the test."""
    made: list[SSHTransport] = []

    async def make(name: str, target: str | None = None, **options: Any) -> SSHTransport:
        transport = SSHTransport(name, target=target, options=SSHOptions(**options))
        made.append(transport)
        await asyncio.wait_for(transport.connect(), 20)
        return transport

    yield make
    for transport in made:
        await transport.close()


async def finish(proc: Process) -> tuple[int | None, bytes, str]:
    """Read stdout to its end, then the exit status and stderr."""
    out = await asyncio.wait_for(proc.stdout.read(), 20)
    code = await asyncio.wait_for(proc.wait(), 20)
    return code, out, await asyncio.wait_for(proc.stderr_text(), 20)


async def run(transport: SSHTransport | LocalTransport, argv: list[str]) -> tuple[int | None, str]:
    code, out, _ = await finish(await transport.start(argv))
    return code, out.decode()


def client_config(path: Path, alias: str, host: SshdHost, **settings: object) -> Path:
    """Append a Host block for ``host`` under ``alias``; ``settings`` override or add options."""
    options: dict[str, object] = {
        "HostName": host.address,
        "Port": host.port,
        "User": host.user,
        "IdentityFile": host.client_key,
        "IdentitiesOnly": "yes",
        "UserKnownHostsFile": path.parent / "known_hosts",
        **settings,
    }
    lines = [f"Host {alias}"] + [f"    {k} {v}" for k, v in options.items() if v is not None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    return path


async def expect(error: type[TransportError], transport: SSHTransport) -> str:
    """Connecting fails with ``error``, naming the host; returns the message."""
    try:
        with pytest.raises(error) as caught:
            await asyncio.wait_for(transport.connect(), 20)
    finally:
        await transport.close()
    assert caught.value.host == transport.name
    return str(caught.value)


# -- running commands ----------------------------------------------------------------------------


async def test_runs_a_command_through_an_alias(connect: Connect, sshd_hosts: SshdHosts) -> None:
    gpu2 = await connect("gpu2")
    proc = await gpu2.start(["sh", "-c", "echo one; echo two; echo oops >&2; exit 3"])
    assert await proc.stdout.readline() == b"one\n"
    assert await finish(proc) == (3, b"two\n", "oops\n")
    assert await run(gpu2, ["id", "-un"]) == (0, f"{sshd_hosts.gpu2.user}\n")


async def test_argv_reaches_the_remote_program_unchanged(connect: Connect) -> None:
    args = ["a b", "$HOME", "it's", "; echo injected", "*", "", 'x"y', "é"]
    code, out = await run(await connect("gpu1"), ["printf", "[%s]\n", *args])
    assert (code, out) == (0, "".join(f"[{a}]\n" for a in args))


async def test_stdin_and_stdout_carry_bytes(connect: Connect) -> None:
    data = bytes(range(256)) * 64 + b"\n\0\xff tail"
    proc = await (await connect("gpu1")).start(["cat"])
    proc.stdin.write(data)
    await proc.stdin.drain()
    proc.stdin.write_eof()
    assert await finish(proc) == (0, data, "")


async def test_stderr_is_drained_and_its_tail_kept(ssh_home: Path) -> None:
    # 3 MB of stderr exceeds the SSH window: unread, it would block the remote program.
    chatty = "head -c 3000000 /dev/zero | tr '\\0' x >&2; echo done"
    async with SSHTransport("gpu1", options=SSHOptions()) as gpu1:
        code, out, err = await finish(await gpu1.start(["sh", "-c", chatty]))
    assert (code, out) == (0, b"done\n")
    assert err == "x" * STDERR_LIMIT


async def test_sessions_share_one_connection(connect: Connect, sshd_hosts: SshdHosts) -> None:
    host = sshd_hosts.gpu2
    seen = len(host.log_text())
    gpu2 = await connect("gpu2")
    results = await asyncio.gather(*(run(gpu2, ["echo", str(i)]) for i in range(6)))
    assert results == [(0, f"{i}\n") for i in range(6)]
    ports = set(re.findall(r"Starting session: command for \S+ from \S+ port (\d+)",
                           host.log_text()[seen:]))  # fmt: skip
    assert len(ports) == 1, ports


async def test_kill_ends_the_session(connect: Connect) -> None:
    proc = await (await connect("gpu1")).start(["sleep", "600"])
    proc.kill()
    assert await asyncio.wait_for(proc.wait(), 20) in (None, -9)


async def test_proxy_jump_goes_through_the_jump_host(
    connect: Connect, sshd_hosts: SshdHosts
) -> None:
    behind, jump = sshd_hosts.behind, sshd_hosts.jump
    if behind.hostname == BEHIND_NAME:  # resolvable on the jump host only
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo(BEHIND_NAME, behind.port)
    assert await run(await connect("behind"), ["id", "-un"]) == (0, f"{behind.user}\n")
    forwarded = f"target {behind.hostname} port {behind.port}"
    poll(lambda: forwarded in jump.log_text(), f"jump's log mentions {forwarded!r}")


async def test_ssh_target_overrides_the_alias(connect: Connect, sshd_hosts: SshdHosts) -> None:
    gpu1 = sshd_hosts.gpu1
    me = await connect("my-gpu", target=f"{gpu1.user}@gpu1:{gpu1.port}")
    assert await run(me, ["id", "-un"]) == (0, f"{gpu1.user}\n")
    closed = SSHTransport("my-gpu", target="gpu1:1", options=SSHOptions())
    assert "(127.0.0.3:1): connection refused" in await expect(ConnectError, closed)
    stranger = SSHTransport("my-gpu", target="nobody@gpu1", options=SSHOptions())
    assert "user 'nobody' was refused" in await expect(AuthError, stranger)


async def test_aes_gcm_is_preferred_unless_the_ssh_config_names_ciphers(
    connect: Connect, ssh_home: Path, sshd_hosts: SshdHosts
) -> None:
    gpu1 = await connect("gpu1")
    assert gpu1._conn is not None
    assert gpu1._conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
    config = ssh_home / ".ssh" / "config"
    client_config(config, "gpu1-chacha", sshd_hosts.gpu1, Ciphers="chacha20-poly1305@openssh.com")
    own = await connect("gpu1-chacha", config_path=config)
    assert own._conn is not None
    assert own._conn.get_extra_info("send_cipher") == "chacha20-poly1305@openssh.com"
    assert await run(own, ["echo", "ok"]) == (0, "ok\n")


# -- the hosts' GPU stubs ------------------------------------------------------------------------


async def test_each_host_sees_its_own_nvidia_smi(connect: Connect, sshd_hosts: SshdHosts) -> None:
    for alias in ("gpu2", "gpu1"):
        host = sshd_hosts[alias]
        code, out = await run(await connect(alias), GPU_QUERY)
        assert (code, out) == (0, "".join(f"{g.row()}\n" for g in host.default_gpus()))
        assert len(out.splitlines()) == host.gpus
    code, _ = await run(await connect("cpu"), GPU_QUERY)
    assert code == 127  # no nvidia-smi on a CPU-only host


async def test_gpu_tables_can_change_under_a_running_host(
    connect: Connect, sshd_hosts: SshdHosts
) -> None:
    host = sshd_hosts.gpu2
    gpu = FakeGpu(0, host.default_gpus()[0].uuid, memory_used=30000, utilization=97)
    host.write_gpus([gpu])
    host.write_apps([FakeApp(gpu.uuid, 4242, 30000, "/usr/bin/python3 train.py")])
    gpu2 = await connect("gpu2")
    assert await run(gpu2, GPU_QUERY) == (0, f"{gpu.row()}\n")
    assert await run(gpu2, APPS_QUERY) == (
        0,
        f"{gpu.uuid}, 4242, 30000, /usr/bin/python3 train.py\n",
    )
    host.set_gpu_error("NVIDIA-SMI has failed because it couldn't communicate with the driver")
    assert (await run(gpu2, GPU_QUERY))[0] == 9


# -- connection failures -------------------------------------------------------------------------


async def test_unknown_host_key_is_refused(ssh_home: Path) -> None:
    (ssh_home / ".ssh" / "known_hosts").write_text("")
    message = await expect(HostKeyError, SSHTransport("gpu1", options=SSHOptions()))
    assert "gpu1 (127.0.0.3:" in message
    assert "host key not in known_hosts" in message
    assert "run `ssh gpu1` once to check and accept it, or pass --accept-new-host-keys" in message


async def test_changed_host_key_is_refused_even_with_accept_new(
    ssh_home: Path, sshd_hosts: SshdHosts
) -> None:
    gpu1 = sshd_hosts.gpu1
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known = ssh_home / ".ssh" / "known_hosts"
    known.write_text(f"[{gpu1.address}]:{gpu1.port} {other}")
    for accept_new in (False, True):
        options = SSHOptions(accept_new_host_keys=accept_new)
        message = await expect(HostKeyError, SSHTransport("gpu1", options=options))
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in message
        assert "someone could be eavesdropping" in message
        assert f"ssh-keygen -R '[{gpu1.address}]:{gpu1.port}'" in message
    assert known.read_text() == f"[{gpu1.address}]:{gpu1.port} {other}"


async def test_accept_new_records_the_key_then_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd_hosts: SshdHosts
) -> None:
    gpu1 = sshd_hosts.gpu1
    home = tmp_path / "fresh-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    config = client_config(tmp_path / "config", "gpu1", gpu1, UserKnownHostsFile=None)
    options = SSHOptions(config_path=config)
    await expect(HostKeyError, SSHTransport("gpu1", options=options))
    async with SSHTransport("gpu1", options=SSHOptions(config_path=config,
                                                       accept_new_host_keys=True)):  # fmt: skip
        pass
    known = home / ".ssh" / "known_hosts"
    assert known.read_text() == f"[{gpu1.address}]:{gpu1.port} {gpu1.host_key}\n"
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert stat.S_IMODE(known.parent.stat().st_mode) == 0o700
    async with SSHTransport("gpu1", options=options) as again:  # now known: no flag needed
        assert await run(again, ["true"]) == (0, "")


async def test_refused_connection(tmp_path: Path, ssh_home: Path, sshd_hosts: SshdHosts) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.3", 0))
        port = s.getsockname()[1]
    config = client_config(tmp_path / "config", "dead", sshd_hosts.gpu1, Port=port)
    message = await expect(
        ConnectError, SSHTransport("dead", options=SSHOptions(config_path=config))
    )
    assert message == f"dead (127.0.0.3:{port}): connection refused; is sshd running?"


async def test_silent_host_times_out(tmp_path: Path, ssh_home: Path, sshd_hosts: SshdHosts) -> None:
    with socket.socket() as s:  # the kernel accepts the TCP connection; nobody ever speaks SSH
        s.bind(("127.0.0.3", 0))
        s.listen(1)
        config = client_config(
            tmp_path / "config", "mute", sshd_hosts.gpu1, Port=s.getsockname()[1]
        )
        options = SSHOptions(config_path=config, connect_timeout=0.3)
        message = await expect(ConnectError, SSHTransport("mute", options=options))
    assert "no answer within 0.3 s" in message


async def test_unresolvable_names(tmp_path: Path, ssh_home: Path, sshd_hosts: SshdHosts) -> None:
    message = await expect(ConnectError, SSHTransport("nosuchhost.invalid", options=SSHOptions()))
    assert message.startswith(
        "nosuchhost.invalid: cannot resolve host name 'nosuchhost.invalid' "
        "(not in ~/.ssh/config and not in DNS); check the Host entry or hosts.toml `ssh =`"
    )
    config = client_config(tmp_path / "config", "ghost", sshd_hosts.gpu1, HostName="ghost.invalid")
    message = await expect(
        ConnectError, SSHTransport("ghost", options=SSHOptions(config_path=config))
    )
    assert f"'ghost.invalid' (the HostName given for ghost in {config}" in message


async def test_auth_failure_names_the_user_and_keys(
    tmp_path: Path, ssh_home: Path, sshd_hosts: SshdHosts
) -> None:
    key = tmp_path / "id_stranger"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    config = client_config(tmp_path / ".ssh" / "config", "gpu1", sshd_hosts.gpu1, IdentityFile=key,
                           UserKnownHostsFile=ssh_home / ".ssh" / "known_hosts")  # fmt: skip
    message = await expect(AuthError, SSHTransport("gpu1", options=SSHOptions(config_path=config)))
    assert f"user '{sshd_hosts.gpu1.user}' was refused" in message
    assert f"keys tried: {key};" in message
    assert "ssh-copy-id gpu1" in message


# -- faults on a live connection ---------------------------------------------------------------


async def test_killed_connection_is_lost_until_reconnected(
    connect: Connect, sshd_hosts: SshdHosts
) -> None:
    gpu1 = await connect("gpu1")
    proc = await gpu1.start(["cat"])
    assert sshd_hosts.gpu1.kill_connections()
    with pytest.raises(ConnectionLostError) as caught:
        await asyncio.wait_for(proc.stdout.readline(), 20)
    assert caught.value.host == "gpu1"
    assert await asyncio.wait_for(proc.wait(), 20) is None
    with pytest.raises(ConnectionLostError, match=r"^gpu1 \(127\.0\.0\.3:\d+\): connection lost"):
        await gpu1.start(["true"])
    await gpu1.connect()
    assert await run(gpu1, ["echo", "back"]) == (0, "back\n")


async def test_frozen_host_is_found_by_keepalive(connect: Connect, sshd_hosts: SshdHosts) -> None:
    gpu1 = await connect("gpu1", keepalive_interval=0.2, keepalive_count_max=2)
    proc = await gpu1.start(["cat"])
    sshd_hosts.gpu1.freeze()
    with pytest.raises(ConnectionLostError, match="keepalive"):
        await asyncio.wait_for(proc.stdout.readline(), 20)
    sshd_hosts.gpu1.thaw()


async def test_dead_listener_keeps_sessions_but_refuses_connections(
    connect: Connect, sshd_hosts: SshdHosts
) -> None:
    gpu1 = await connect("gpu1")
    sshd_hosts.gpu1.stop_listener()
    assert await run(gpu1, ["echo", "still here"]) == (0, "still here\n")
    fresh = SSHTransport("gpu1", options=SSHOptions())
    assert "connection refused" in await expect(ConnectError, fresh)
    sshd_hosts.gpu1.start_listener()
    await fresh.connect()
    await fresh.close()


async def test_host_crash_is_scoped_to_one_host(connect: Connect, sshd_hosts: SshdHosts) -> None:
    nfs1, nfs2 = sshd_hosts.nfs1, sshd_hosts.nfs2
    assert nfs1.user == nfs2.user  # one user, one home: the shared-NFS case
    one = await (await connect("nfs1")).start(["sleep", "600"])
    two = await (await connect("nfs2")).start(["sleep", "600"])
    poll(lambda: any("sleep 600" in p.cmdline for p in nfs2.processes()), "sleep on nfs2")
    assert nfs1.kill_user_processes()
    assert await asyncio.wait_for(one.wait(), 20) is None
    assert not [p for p in nfs1.processes() if p.uid == nfs1.uid]
    assert any("sleep 600" in p.cmdline for p in nfs2.processes())
    two.kill()


async def test_homes_are_shared_only_where_the_user_is(
    connect: Connect, sshd_hosts: SshdHosts
) -> None:
    name = f"probe-{os.getpid()}"
    await run(await connect("nfs1"), ["sh", "-c", f'echo nfs > "$HOME/{name}"'])
    assert await run(await connect("nfs2"), ["cat", name]) == (0, "nfs\n")
    assert (await run(await connect("gpu1"), ["cat", name]))[0] != 0
    assert sshd_hosts.gpu1.home != sshd_hosts.gpu2.home


# -- LocalTransport ------------------------------------------------------------------------------


async def test_local_transport_runs_commands() -> None:
    async with LocalTransport() as local:
        script = "import sys; print(sys.stdin.readline().upper(), end=''); sys.exit(4)"
        proc = await local.start([sys.executable, "-c", script])
        proc.stdin.write(b"hello\n")
        await proc.stdin.drain()
        assert await finish(proc) == (4, b"HELLO\n", "")
        code, _, err = await finish(await local.start(["no-such-program-here", "x"]))
        assert code == 127 and "no-such-program-here" in err
        sleeper = await local.start(["sleep", "600"])
        sleeper.kill()
        assert await asyncio.wait_for(sleeper.wait(), 20) == -9
