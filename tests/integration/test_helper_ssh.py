"""The helper over real SSH (asyncssh streams via SSHTransport): upload, runs, a dropped link."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatcher.errors import ConnectionLostError
from dispatcher.remote import protocol
from dispatcher.remote.client import HelperClient
from dispatcher.transport.transports import SSHOptions, SSHTransport
from tests.helper_harness import gate_command
from tests.sshd import SshdHosts

pytestmark = pytest.mark.sshd


@pytest.fixture
async def gpu2(ssh_home: Path) -> AsyncIterator[SSHTransport]:
    transport = SSHTransport("gpu2", options=SSHOptions())
    await asyncio.wait_for(transport.connect(), 20)
    yield transport
    await transport.close()


async def start_helper(transport: SSHTransport, state: str) -> HelperClient:
    proc = await transport.start(protocol.bootstrap_argv("python3", state))
    client = HelperClient(transport.name, proc.stdout, proc.stdin)
    await client.start(timeout=20, stderr_text=proc.stderr_text)
    return client


async def next_exit(client: HelperClient, run_id: str) -> dict[str, object]:
    while True:
        event = await asyncio.wait_for(client.events.get(), 20)
        if event.get("event") == "exit" and event["run"]["run_id"] == run_id:
            run: dict[str, object] = event["run"]
            return run


async def test_upload_run_and_gpus_over_ssh(gpu2: SSHTransport, sshd_hosts: SshdHosts) -> None:
    state = f"~/.labtasker-test-{uuid.uuid4().hex[:8]}"
    first = await start_helper(gpu2, state)
    try:
        assert first.uploaded and first.hello["user"] == sshd_hosts.gpu2.user
        assert first.hello["state_dir"] == str(sshd_hosts.gpu2.home / state[2:])
        await first.call("launch", run_id="r", spec={"command": "echo $USER; exit 4"})
        run = await next_exit(first, "r")
        assert run["exit_code"] == 4 and run["log_size"] == len(sshd_hosts.gpu2.user) + 1
        assert len((await first.call("gpus"))["gpus"]) == 2
    finally:
        await first.close()
    second = await start_helper(gpu2, state)
    try:
        assert not second.uploaded
        assert (await second.call("probe", runs=["r"]))["runs"]["r"]["exit_code"] == 4
    finally:
        await second.close()


async def test_a_dropped_connection_leaves_the_task_running(
    gpu2: SSHTransport, sshd_hosts: SshdHosts
) -> None:
    state = f"~/.labtasker-test-{uuid.uuid4().hex[:8]}"
    gate = sshd_hosts.gpu2.home / f"gate-{uuid.uuid4().hex[:8]}"
    client = await start_helper(gpu2, state)
    await client.call("launch", run_id="long", spec={"command": gate_command(gate, "echo done")})
    sshd_hosts.gpu2.kill_connections()
    await asyncio.wait_for(client.closed.wait(), 20)
    with pytest.raises(ConnectionLostError):
        await client.call("ping")
    await client.close()

    await asyncio.wait_for(gpu2.connect(), 20)
    again = await start_helper(gpu2, state)
    try:
        assert (await again.call("probe", runs=["long"]))["runs"]["long"]["state"] in (
            "starting",
            "running",
        )
        gate.touch()
        run = await next_exit(again, "long")  # the probe put it on the watch list
        assert run["state"] == "exited" and run["exit_code"] == 0
    finally:
        await again.close()
        gate.unlink(missing_ok=True)
