"""Test harness for labtasker's helper: starts it locally exactly as the bootstrap does over SSH.

``LocalHelper`` drives it through ``HelperClient``; ``RawHelper`` speaks raw lines to it (for
malformed input). Also: polling with a deadline, process-group inspection via /proc, and a finder
for an old interpreter (3.8) to prove the helper runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dispatcher.remote import protocol
from dispatcher.remote.client import HelperClient

DEADLINE = 15.0


async def eventually(
    probe: Callable[[], Awaitable[Any]], timeout: float = DEADLINE, what: str = "condition"
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.02)


class LocalHelper:
    """One helper process started by the bootstrap in a subprocess, driven by HelperClient."""

    def __init__(
        self,
        state_dir: Path,
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        fence: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.argv = argv or protocol.bootstrap_argv(python, str(state_dir), fence)
        self.env = env
        self.stderr_path = state_dir.parent / f"helper-stderr-{id(self)}.txt"
        self.proc: asyncio.subprocess.Process | None = None
        self.client: HelperClient | None = None
        self.exits: dict[str, dict[str, Any]] = {}

    async def spawn(self) -> HelperClient:
        """Start the process and wrap it in a client (no handshake yet)."""
        with open(self.stderr_path, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=self.env,
            )
        assert self.proc.stdout is not None
        self.client = HelperClient("local", self.proc.stdout, self.proc.stdin)
        return self.client

    async def stderr_text(self) -> str:
        assert self.proc is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 5.0)
        return self.stderr_path.read_text(errors="replace")

    async def start(self, timeout: float = DEADLINE) -> dict[str, Any]:
        client = await self.spawn()
        return await client.start(timeout=timeout, stderr_text=self.stderr_text)

    async def __aenter__(self) -> LocalHelper:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.stop()
        finally:
            self.kill_leftover_runs()

    def kill_leftover_runs(self) -> None:
        """SIGKILL tasks still running (a failed test must not leave gated tasks waiting)."""
        for started in self.state_dir.glob("runs/*/started.json"):
            if (started.parent / "exit.json").exists():
                continue
            pgid = json.loads(started.read_text()).get("pgid")
            # Only a task's own session: never this process's group, never a made-up number.
            # (killpg(1) would be kill(-1): every process on the machine.)
            mine = isinstance(pgid, int) and pgid > 1 and pgid != os.getpgrp()
            with contextlib.suppress(OSError):
                if mine and os.getsid(pgid) == pgid:
                    os.killpg(pgid, signal.SIGKILL)

    async def stop(self) -> int | None:
        """Close the session (the helper sees EOF) and reap the process; returns its exit code."""
        if self.client is not None:
            await self.client.close()
        if self.proc is None:
            return None
        try:
            return await asyncio.wait_for(self.proc.wait(), DEADLINE)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError("the helper did not exit after its stdin closed") from None

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        assert self.client is not None
        return await self.client.call(op, **params)

    async def launch(self, run_id: str, command: str, **spec: Any) -> dict[str, Any]:
        return await self.call("launch", run_id=run_id, spec={"command": command, **spec})

    async def probe(self, run_id: str) -> dict[str, Any]:
        reply = await self.call("probe", runs=[run_id])
        report: dict[str, Any] = reply["runs"][run_id]
        return report

    async def wait_exit(self, run_id: str, timeout: float = DEADLINE) -> dict[str, Any]:
        """The run report of the exit event for ``run_id`` (events for others are kept)."""
        assert self.client is not None
        end = time.monotonic() + timeout
        while run_id not in self.exits:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no exit event for {run_id} within {timeout}s")
            try:
                event = await asyncio.wait_for(self.client.events.get(), left)
            except TimeoutError:
                continue
            if event.get("event") == "exit":
                self.exits[event["run"]["run_id"]] = event["run"]
        return self.exits[run_id]

    async def wait_state(self, run_id: str, state: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            rep = await self.probe(run_id)
            return rep if rep["state"] == state else None

        result: dict[str, Any] = await eventually(probe, what=f"{run_id} in state {state}")
        return result

    def run_file(self, run_id: str, name: str) -> Path:
        return self.state_dir / "runs" / run_id / name

    def started(self, run_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run_file(run_id, "started.json").read_text())
        return data


class RawHelper:
    """A helper on plain pipes, for sending lines no client would send."""

    def __init__(
        self, state_dir: Path, env: dict[str, str] | None = None, new_session: bool = False
    ) -> None:
        self.proc = subprocess.Popen(
            protocol.bootstrap_argv(sys.executable, str(state_dir)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=new_session,
        )
        self.buf = b""
        self.sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        first = self.readline()
        if first == b"need\n":
            assert self.proc.stdin is not None
            self.proc.stdin.write(protocol.helper_source())
            self.proc.stdin.flush()
        hello = json.loads(self.readline())
        assert hello["event"] == "hello"

    def readline(self, timeout: float = DEADLINE) -> bytes:
        """One line from the helper; fails after ``timeout`` seconds or at EOF."""
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                raise AssertionError(f"no line from the helper within {timeout}s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"helper ended (exit {self.proc.wait()})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def exchange(self, line: bytes) -> dict[str, Any]:
        """Send one raw line (a newline is added) and return the parsed reply line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        reply = json.loads(self.readline())
        assert isinstance(reply, dict), reply
        return reply

    def read_to_eof(self, timeout: float = DEADLINE) -> bytes:
        """Everything the helper still writes until its stdout closes; fails after ``timeout``."""
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                raise AssertionError(f"the helper's stdout still open after {timeout}s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                data, self.buf = self.buf, b""
                return data
            self.buf += chunk

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.sel.close()
        code = self.proc.wait(DEADLINE)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (pid 1 may never reap orphans)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(name))
    return members


def pid_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def gate_command(gate: Path, then: str = "true") -> str:
    """Shell text that prints "ready", waits until ``gate`` exists, then runs ``then``."""
    return f"echo ready; while [ ! -e '{gate}' ]; do sleep 0.02; done; {then}"


@functools.cache
def find_python(version: str) -> str | None:
    """An interpreter of exactly ``version`` (e.g. "3.8"), from PATH or pyenv; None if absent."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        pattern = f"{root.stdout.strip()}/versions/{version}.*/bin/python{version}"
        candidates += sorted(glob.glob(pattern))
    for exe in candidates:
        if not exe:
            continue
        try:
            out = subprocess.run(
                [
                    exe,
                    "-c",
                    "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.executable)",
                ],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = out.stdout.split()
        if out.returncode == 0 and len(lines) == 2 and lines[0] == version:
            return lines[1]
    return None
