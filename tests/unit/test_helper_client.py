"""HelperClient against real helper processes: bootstrap upload and cache, errors, pipelining."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from dispatcher.errors import (
    ConnectionLostError,
    ProtocolError,
    PythonMissingError,
    RemoteError,
)
from dispatcher.remote import protocol
from tests.helper_harness import LocalHelper, find_python


def cached_helper(state: Path) -> Path:
    return state / f"helper-{protocol.helper_sha256()[:16]}.py"


async def test_first_start_uploads_then_the_cached_copy_is_used(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with LocalHelper(state) as first:
        assert first.client is not None and first.client.uploaded
        assert first.client.hello["state_dir"] == str(state)
        assert first.client.hello["version"] == protocol.PROTOCOL_VERSION
        assert first.client.hello["pid"] == first.proc.pid if first.proc else False
    assert cached_helper(state).read_bytes() == protocol.helper_source()
    async with LocalHelper(state) as second:
        assert second.client is not None and not second.client.uploaded
        assert (await second.call("ping"))["ok"]


async def test_a_tampered_helper_file_is_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with LocalHelper(state):
        pass
    cached_helper(state).write_text("def main(d):\n    print('evil')\n")
    async with LocalHelper(state) as h:
        assert h.client is not None and h.client.uploaded
        assert (await h.call("ping"))["ok"]
    assert cached_helper(state).read_bytes() == protocol.helper_source()


async def test_shell_noise_before_the_bootstrap_is_skipped(tmp_path: Path) -> None:
    argv = protocol.bootstrap_argv(sys.executable, str(tmp_path / "state"))
    shell = 'echo "Welcome to the lab"; echo; exec "$@"'
    async with LocalHelper(tmp_path / "state", argv=["sh", "-c", shell, "sh", *argv]) as h:
        assert (await h.call("ping"))["ok"]


async def test_many_calls_in_flight_on_one_stream(tmp_path: Path) -> None:
    async with LocalHelper(tmp_path / "state") as h:
        replies = await asyncio.gather(
            *(h.call("probe", runs=[f"run{i}"]) for i in range(100)),
            *(h.call("ping") for _ in range(100)),
        )
    assert [list(r["runs"]) for r in replies[:100]] == [[f"run{i}"] for i in range(100)]
    assert len({r["id"] for r in replies}) == 200


async def test_an_error_reply_raises_remote_error_naming_the_host(tmp_path: Path) -> None:
    async with LocalHelper(tmp_path / "state") as h:
        with pytest.raises(RemoteError, match=r"^local: unknown op 'bogus'") as info:
            await h.call("bogus")
        assert info.value.host == "local"
        assert (await h.call("ping"))["ok"]  # the session survives


async def test_no_answer_in_time_is_connection_lost(tmp_path: Path) -> None:
    async with LocalHelper(tmp_path / "state") as h:
        assert h.proc is not None and h.client is not None
        os.kill(h.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ConnectionLostError, match=r"no answer from local within 0\.2s"):
                await h.client.call("ping", timeout=0.2)
        finally:
            os.kill(h.proc.pid, signal.SIGCONT)
        assert (await h.call("ping"))["ok"]  # the late reply was dropped, not misrouted


async def test_a_dying_helper_fails_pending_and_later_calls(tmp_path: Path) -> None:
    h = LocalHelper(tmp_path / "state")
    await h.start()
    assert h.proc is not None and h.client is not None
    os.kill(h.proc.pid, signal.SIGSTOP)
    pending = asyncio.create_task(h.client.call("ping", timeout=None))
    await asyncio.sleep(0)  # let the request go out before the helper dies
    os.kill(h.proc.pid, signal.SIGKILL)
    with pytest.raises(ConnectionLostError, match="closed"):
        await pending
    await asyncio.wait_for(h.client.closed.wait(), 10)
    with pytest.raises(ConnectionLostError):
        await h.client.call("ping")
    await h.stop()


async def test_close_ends_the_helper(tmp_path: Path) -> None:
    h = LocalHelper(tmp_path / "state")
    await h.start()
    assert h.client is not None
    await h.client.close()
    assert h.client.closed.is_set()
    with pytest.raises(ConnectionLostError):
        await h.client.call("ping")
    assert await h.stop() == 0


def fake_helper(tmp_path: Path, body: str) -> list[str]:
    """argv of a stand-in for the bootstrap that runs ``body`` (Python)."""
    script = tmp_path / "fake.py"
    script.write_text("import json, sys, time\n" + body)
    return [sys.executable, str(script)]


async def test_another_protocol_version_is_refused(tmp_path: Path) -> None:
    body = "print('have'); print(json.dumps({'event': 'hello', 'version': 999}), flush=True)\n"
    body += "sys.stdin.read()\n"
    h = LocalHelper(tmp_path / "state", argv=fake_helper(tmp_path, body))
    speaks = f"protocol 999 but this labtasker speaks {protocol.PROTOCOL_VERSION}"
    with pytest.raises(ProtocolError, match=speaks):
        await h.start()
    await h.stop()


async def test_garbage_instead_of_hello_is_a_protocol_error(tmp_path: Path) -> None:
    body = "print('have'); print('Segmentation fault?', flush=True); sys.stdin.read()\n"
    h = LocalHelper(tmp_path / "state", argv=fake_helper(tmp_path, body))
    with pytest.raises(ProtocolError, match="expected the helper's hello"):
        await h.start()
    await h.stop()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("print('have', flush=True); sys.stderr.write('disk quota exceeded\\n'); sys.exit(1)\n",
         "disk quota exceeded"),
        ("print('need', flush=True); open('/labtasker/no/such/dir')\n", "FileNotFoundError"),
    ],
)  # fmt: skip
async def test_a_helper_that_dies_early_reports_its_stderr(
    tmp_path: Path, body: str, said: str
) -> None:
    h = LocalHelper(tmp_path / "state", argv=fake_helper(tmp_path, body))
    with pytest.raises(RemoteError, match=said) as info:
        await h.start()
    assert not isinstance(info.value, PythonMissingError)
    await h.stop()


async def test_a_missing_interpreter_is_python_missing(tmp_path: Path) -> None:
    argv = ["sh", "-c", "exec labtasker-no-such-python3 -c pass"]
    h = LocalHelper(tmp_path / "state", argv=argv)
    with pytest.raises(PythonMissingError, match=r"local: no usable Python >= 3\.8"):
        await h.start()
    await h.stop()


async def test_an_old_interpreter_is_python_missing(tmp_path: Path) -> None:
    old = find_python("3.7") or find_python("3.6")
    if old is None:
        pytest.skip("no Python 3.6/3.7 interpreter found on PATH or in pyenv")
    h = LocalHelper(tmp_path / "state", python=old)
    with pytest.raises(
        PythonMissingError, match=r"Python >= 3\.8 needed on this host, found 3\.[67]"
    ):
        await h.start()
    await h.stop()


async def test_silence_at_start_is_connection_lost(tmp_path: Path) -> None:
    h = LocalHelper(tmp_path / "state", argv=fake_helper(tmp_path, "sys.stdin.read()\n"))
    await h.spawn()
    assert h.client is not None
    with pytest.raises(ConnectionLostError, match=r"no answer from local within 0\.2s"):
        await h.client.start(timeout=0.2)
    await h.stop()


async def test_events_arrive_in_order_and_replies_are_not_events(tmp_path: Path) -> None:
    async with LocalHelper(tmp_path / "state") as h:
        assert h.client is not None
        for i in range(5):
            await h.launch(f"e{i}", f"exit {i}")
        codes = {}
        for _ in range(5):
            event = await asyncio.wait_for(h.client.events.get(), 10)
            assert event["event"] == "exit"
            codes[event["run"]["run_id"]] = event["run"]["exit_code"]
        assert codes == {f"e{i}": i for i in range(5)}
        assert h.client.events.empty()


async def test_long_reply_lines_need_no_reader_limit(tmp_path: Path) -> None:
    # asyncio's StreamReader.readline stops at 64 KiB; an inline log line is longer.
    async with LocalHelper(tmp_path / "state") as h:
        await h.launch("wide", "head -c 65536 /dev/zero | tr '\\0' w")
        rep = await h.wait_exit("wide")
        assert len(json.dumps(rep)) > 80000 and rep["log_size"] == 65536
