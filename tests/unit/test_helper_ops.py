"""The helper's other ops (gpus, read, tail, cleanup, check), bad input, and Python 3.8 safety."""

from __future__ import annotations

import ast
import json
import math
import os
import py_compile
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.errors import RemoteError
from dispatcher.remote import helper as helper_module
from dispatcher.remote import protocol
from tests.helper_harness import LocalHelper, RawHelper, find_python, gate_command

HELPER_PY = Path(helper_module.__file__)

GPU_TABLE = """\
0, GPU-aaaa, NVIDIA A100-SXM4-80GB, 1234, 81920, 37
1, GPU-bbbb, Tesla V100, Rev. 2, [N/A], 16384, [Not Supported]
"""


def stub_nvidia_smi(bindir: Path, gpus: str, apps: str, code: int = 0) -> None:
    """An nvidia-smi on PATH that answers each query from a file, like the real one."""
    bindir.mkdir(exist_ok=True)
    (bindir / "gpus.txt").write_text(gpus)
    (bindir / "apps.txt").write_text(apps)
    script = bindir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'[ -e "{bindir}/gate" ] || [ ! -e "{bindir}/wait" ] || '
        f'while [ ! -e "{bindir}/gate" ]; do sleep 0.02; done\n'
        f'case "$1" in --query-gpu=*) cat "{bindir}/gpus.txt";; *) cat "{bindir}/apps.txt";; esac\n'
        f"exit {code}\n"
    )
    script.chmod(0o755)


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    return tmp_path / "bin"


@pytest.fixture
async def helper(tmp_path: Path, bindir: Path) -> AsyncIterator[LocalHelper]:
    bindir.mkdir()
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    async with LocalHelper(tmp_path / "state", env=env) as h:
        yield h


async def test_gpus_parses_nvidia_smi(helper: LocalHelper, bindir: Path) -> None:
    me = os.getpid()
    apps = f"GPU-aaaa, {me}, 1000, /usr/bin/python3, train.py\nGPU-bbbb, 999999999, [N/A], ghost\n"
    stub_nvidia_smi(bindir, GPU_TABLE, apps)
    reply = await helper.call("gpus")
    assert reply["error"] is None
    assert reply["gpus"] == [
        {"index": 0, "uuid": "GPU-aaaa", "name": "NVIDIA A100-SXM4-80GB",
         "memory_used_mib": 1234, "memory_total_mib": 81920, "utilization": 37},
        {"index": 1, "uuid": "GPU-bbbb", "name": "Tesla V100, Rev. 2",
         "memory_used_mib": None, "memory_total_mib": 16384, "utilization": None},
    ]  # fmt: skip
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    assert reply["processes"] == [
        {"gpu_uuid": "GPU-aaaa", "pid": me, "user": user, "used_memory_mib": 1000,
         "name": "/usr/bin/python3, train.py", "run_id": os.environ.get("LABTASKER_RUN_ID")},
        {"gpu_uuid": "GPU-bbbb", "pid": 999999999, "user": "?", "used_memory_mib": None,
         "name": "ghost", "run_id": None},
    ]  # fmt: skip


async def test_gpus_names_the_labtasker_run_of_each_process(
    helper: LocalHelper, bindir: Path
) -> None:
    """A process whose environment holds LABTASKER_RUN_ID is that run's; others are nobody's."""
    env = {**os.environ, "LABTASKER_RUN_ID": "t7-a1-0123456789abcdef"}
    ours = subprocess.Popen(["sleep", "60"], env=env)
    other = subprocess.Popen(["sleep", "60"], env={"PATH": os.environ["PATH"]})
    try:
        apps = f"GPU-aaaa, {ours.pid}, 2048, python\nGPU-aaaa, {other.pid}, 512, python\n"
        stub_nvidia_smi(bindir, GPU_TABLE, apps)
        procs = (await helper.call("gpus"))["processes"]
        assert [(p["pid"], p["run_id"]) for p in procs] == [
            (ours.pid, "t7-a1-0123456789abcdef"),
            (other.pid, None),
        ]
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()


async def test_gpus_without_devices_or_with_a_broken_driver(
    helper: LocalHelper, bindir: Path
) -> None:
    stub_nvidia_smi(bindir, "No devices were found\n", "No devices were found\n", code=6)
    assert (await helper.call("gpus"))["gpus"] == []
    assert (await helper.call("gpus"))["error"] is None
    stub_nvidia_smi(bindir, "NVIDIA-SMI has failed because it couldn't communicate\n", "", 9)
    reply = await helper.call("gpus")
    assert reply["gpus"] == []
    assert (
        reply["error"] == "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate"
    )


async def test_gpus_without_nvidia_smi(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    async with LocalHelper(tmp_path / "state", env=env) as h:
        reply = await h.call("gpus")
    assert reply["error"] == "nvidia-smi not found on PATH" and reply["gpus"] == []


async def test_a_slow_nvidia_smi_does_not_block_other_requests(
    helper: LocalHelper, bindir: Path
) -> None:
    stub_nvidia_smi(bindir, GPU_TABLE, "")
    (bindir / "wait").touch()
    import asyncio

    gpus = asyncio.create_task(helper.call("gpus"))
    assert (await helper.call("ping"))["ok"]
    assert not gpus.done()
    (bindir / "gate").touch()
    assert len((await gpus)["gpus"]) == 2


async def test_read_and_tail(helper: LocalHelper, tmp_path: Path) -> None:
    await helper.launch("p", r"printf 'first\n\nepoch 1\r 50%%\r100%%\n\n'")
    await helper.wait_exit("p")
    assert (await helper.call("tail", runs=["p", "none"]))["lines"] == {"p": "100%", "none": None}
    import base64

    part = await helper.call("read", run_id="p", offset=2, size=3)
    assert base64.b64decode(part["data"]) == b"rst"
    assert part["size"] == len(b"first\n\nepoch 1\r 50%\r100%\n\n")
    with pytest.raises(RemoteError, match="no run absent"):
        await helper.call("read", run_id="absent", offset=0, size=10)
    with pytest.raises(RemoteError, match="limit"):
        await helper.call("read", run_id="p", offset=0, size=2 * 1024 * 1024)


async def test_cleanup_removes_finished_runs_only(helper: LocalHelper, tmp_path: Path) -> None:
    await helper.launch("done", "true")
    await helper.launch("busy", gate_command(tmp_path / "gate"))
    await helper.wait_exit("done")
    reply = await helper.call("cleanup", runs=["done", "busy", "absent"])
    assert reply["removed"] == 1 and reply["refused"] == ["busy"]
    assert not (helper.state_dir / "runs" / "done").exists()
    assert (helper.state_dir / "runs" / "busy").is_dir()
    (tmp_path / "gate").touch()
    await helper.wait_exit("busy")


async def test_check_reports_workdir_and_state_dir(helper: LocalHelper, tmp_path: Path) -> None:
    reply = await helper.call("check", workdir=str(tmp_path / "new" / "dir"))
    assert reply["workdir"] == str(tmp_path / "new" / "dir")
    assert reply["workdir_writable"] and reply["workdir_error"] is None
    assert reply["state_dir_writable"] and reply["disk_free_bytes"] > 0
    assert reply["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert not (tmp_path / "new").exists()  # check never creates anything
    (tmp_path / "file").write_text("")
    reply = await helper.call("check", workdir=str(tmp_path / "file"))
    assert not reply["workdir_writable"] and "not a directory" in reply["workdir_error"]


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[RawHelper]:
    h = RawHelper(tmp_path / "state")
    yield h
    assert h.close() == 0


def test_malformed_lines_get_error_replies_and_the_helper_lives_on(raw: RawHelper) -> None:
    for line in (b"not json", b"", b"[1, 2]", b"\xff\xfe", b'{"op": 5}', b"{" * 100000):
        reply = raw.exchange(line)
        assert reply["id"] is None and reply["ok"] is False and reply["error"], line[:20]
    reply = raw.exchange(b'{"id": 9, "op": "nope"}')
    assert (
        reply == {"id": 9, "ok": False, "error": reply["error"]} and "unknown op" in reply["error"]
    )
    reply = raw.exchange(b'{"id": "x", "op": "probe", "runs": "notalist"}')
    assert reply["id"] == "x" and reply["ok"] is False
    assert raw.exchange(b'{"id": 10, "op": "ping"}') == {"id": 10, "ok": True}


def test_the_helper_lets_go_of_its_pipes_while_tasks_run(tmp_path: Path) -> None:
    # Over SSH the session only ends when no process holds the channel's pipes.
    raw = RawHelper(tmp_path / "state")
    gate = tmp_path / "gate"
    spec = {"command": gate_command(gate)}
    reply = raw.exchange(
        json.dumps({"id": 1, "op": "launch", "run_id": "r", "spec": spec}).encode()
    )
    assert reply["status"] == "started"
    assert raw.proc.stdin is not None
    raw.proc.stdin.close()
    raw.read_to_eof()
    assert raw.proc.wait(15) == 0
    assert not (tmp_path / "state" / "runs" / "r" / "exit.json").exists()  # still running
    gate.touch()
    assert raw.close() == 0


def test_killing_the_helpers_process_group_spares_the_tasks(tmp_path: Path) -> None:
    # What a dropped SSH session with a pty, or a killed login session, does to the helper.
    raw = RawHelper(tmp_path / "state", new_session=True)
    gate = tmp_path / "gate"
    spec = {"command": gate_command(gate, "echo survived")}
    raw.exchange(json.dumps({"id": 1, "op": "launch", "run_id": "r", "spec": spec}).encode())
    run = tmp_path / "state" / "runs" / "r"
    deadline = time.monotonic() + 15
    while not (run / "started.json").exists():
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)
    os.killpg(raw.proc.pid, signal.SIGKILL)
    assert raw.proc.wait(15) == -signal.SIGKILL
    gate.touch()
    while not (run / "exit.json").exists():
        assert time.monotonic() < deadline, "the task's exit was never recorded"
        time.sleep(0.02)
    assert json.loads((run / "exit.json").read_text())["exit_code"] == 0
    assert (run / "output.log").read_text() == "ready\nsurvived\n"
    raw.close()


SAFE_OPS = ["ping", "probe", "kill", "read", "tail", "cleanup", "check", "nope", ""]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
requests = st.fixed_dictionaries(
    {"op": st.sampled_from(SAFE_OPS)},
    optional={"id": json_values, "run_id": json_values, "runs": json_values,
              "offset": json_values, "size": json_values, "grace": json_values,
              "bytes": json_values, "workdir": json_values},
)  # fmt: skip
lines = (
    requests.map(lambda r: json.dumps(r).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200).filter(lambda b: b"\n" not in b and b"launch" not in b)
)


def test_fuzzed_request_lines_always_get_one_well_formed_reply(raw: RawHelper) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(line=lines)
    def one(line: bytes) -> None:
        reply = raw.exchange(line)
        assert set(reply) >= {"id", "ok"} and isinstance(reply["ok"], bool)
        if not reply["ok"]:
            assert isinstance(reply["error"], str) and reply["error"]
        try:
            sent = json.loads(line)
        except ValueError:
            sent = None
        expected = sent.get("id") if isinstance(sent, dict) else None
        if not (isinstance(expected, float) and math.isnan(expected)):
            assert reply["id"] == expected

    one()
    assert raw.exchange(b'{"id": 1, "op": "ping"}') == {"id": 1, "ok": True}


def test_helper_is_python38_source_and_stdlib_only(tmp_path: Path) -> None:
    src = HELPER_PY.read_text()
    tree = ast.parse(src, feature_version=(3, 8))
    py_compile.compile(str(HELPER_PY), cfile=str(tmp_path / "h.pyc"), doraise=True)
    assert src.startswith('"""') and "from __future__ import annotations" in src
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        assert not isinstance(node, ast.Match)
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names
    assert "removeprefix" not in src and "removesuffix" not in src


def test_helper_constants_match_the_protocol() -> None:
    assert helper_module.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION
    assert helper_module.INLINE_LOG_LIMIT == protocol.INLINE_LOG_LIMIT
    assert helper_module.PAYLOAD_MARK == protocol.PAYLOAD_MARK


async def test_helper_works_on_python_38(tmp_path: Path) -> None:
    py38 = find_python("3.8")
    if py38 is None:
        pytest.skip("no Python 3.8 interpreter found on PATH or in pyenv")
    async with LocalHelper(tmp_path / "state", python=py38) as h:
        assert h.client is not None and h.client.hello["python"].startswith("3.8.")
        await h.launch("old", 'echo hi; echo "{}" > "$LABTASKER_RESULT"', timeout=30)
        rep = await h.wait_exit("old")
        assert rep["exit_code"] == 0 and rep["result"] == {}
        await h.launch("t", "sleep 30", timeout=0.1)
        assert (await h.wait_exit("t"))["timed_out"]
        for op in ("gpus", "check"):
            assert (await h.call(op))["ok"]
        assert (await h.call("tail", runs=["old"]))["lines"] == {"old": "hi"}
        mode = stat.S_IMODE((h.state_dir / "runs" / "old" / "exit.json").stat().st_mode)
        assert mode == 0o600
