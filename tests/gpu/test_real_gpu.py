"""Real NVIDIA GPUs and PyTorch: dispatch through the real CLI on the ``local`` host.

Skipped where ``nvidia-smi -L`` lists no GPU or PyTorch cannot use one (CI machines, laptops).
Run on a GPU server with ``python3 -m pytest -q tests/gpu``. What it proves, with the real driver's
``nvidia-smi`` rather than the stub the other tests put on their hosts' PATH:

- every task sees exactly the GPU the queue recorded for it (``CUDA_VISIBLE_DEVICES``), runs
  CUDA work there, and no two tasks ever overlap on one GPU (from the tasks' own timestamps);
- a GPU whose memory another process holds is skipped, the pending task says so, and it starts
  once that process exits.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 300.0


def _gpu_count() -> int:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _device_names() -> dict[int, str]:
    """GPU index -> name, as nvidia-smi lists them."""
    argv = ["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    return {int(i): name.strip() for i, name in (line.split(",", 1) for line in out.splitlines())}


def _torch_cuda() -> bool:
    code = "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


GPUS = _gpu_count()
pytestmark = pytest.mark.skipif(
    GPUS == 0 or not _torch_cuda(), reason="needs a real NVIDIA GPU, nvidia-smi and PyTorch"
)

TASK = """\
import json, os, sys, time
import torch
start = time.time()
assert torch.cuda.device_count() == 1, torch.cuda.device_count()
x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
for _ in range(50):
    x = torch.nn.functional.normalize(x @ x, dim=1)
torch.cuda.synchronize()
time.sleep(float(sys.argv[1]))
result = {
    "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "device": torch.cuda.get_device_name(0),
    "checksum": float(x.float().abs().sum()),
    "t0": start, "t1": time.time(),
}
with open(os.environ["LABTASKER_RESULT"], "w") as f:
    json.dump(result, f)
print("ok", result)
"""

HOLD = """\
import sys, time
import torch
x = torch.empty(int(float(sys.argv[1]) * 2**30), dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("holding", flush=True)
time.sleep(600)
"""


class Lab:
    """A controller folder with a hosts.toml naming only ``local`` with ``gpus`` as given."""

    def __init__(self, root: Path, gpus: str) -> None:
        self.root = root
        (root / "work").mkdir(parents=True)
        (root / "work" / "task.py").write_text(TASK)
        (root / "hosts.toml").write_text(
            "[hosts.local]\n"
            f"gpus = {gpus}\n"
            f'workdir = "{root / "work"}"\n'
            f'state_dir = "{root / "state"}"\n'
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env["LABTASKER_DB"] = str(self.root / "queue.duckdb")
        env["COLUMNS"] = "200"
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "dispatcher", *args]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), cwd=self.root, env=self.env(), capture_output=True, text=True,
            timeout=DEADLINE, check=False,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, f"labtasker {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def tasks(self) -> list[dict[str, Any]]:
        return list(json.loads(self.ok("queue", "ls", "--json")))


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path, '"auto"')


def _until(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_each_task_gets_its_own_real_gpu(lab: Lab) -> None:
    n = 2 * GPUS + 1
    lab.ok(
        "queue", "add", "--gpus", "1", "--grid", f"i={','.join(map(str, range(n)))}",
        "--", sys.executable, "task.py", "0.5",
    )  # fmt: skip
    done = lab.cli("dispatch", "--hosts", str(lab.root / "hosts.toml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    tasks = lab.tasks()
    assert [t["state"] for t in tasks] == ["succeeded"] * n
    devices = _device_names()
    by_gpu: dict[int, list[tuple[float, float]]] = {}
    for t in tasks:
        assert t["gpus"] is not None and len(t["gpus"]) == 1, t
        gpu = t["gpus"][0]
        r = t["result"]
        assert r["visible"] == str(gpu), (t["id"], r, gpu)
        assert r["device"] == devices[gpu], (r, devices)
        assert r["checksum"] == r["checksum"] and r["checksum"] > 0  # finite, real work done
        by_gpu.setdefault(gpu, []).append((_ts(t["started_at"]), _ts(t["finished_at"])))
    for spans in by_gpu.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two tasks overlapped on one GPU: {spans}"
    table = lab.ok("results", "--format", "json")
    rows = json.loads(table)
    assert len(rows) == n and all("result.device" in row for row in rows)


@pytest.fixture
def holder(lab: Lab) -> Iterator[subprocess.Popen[str]]:
    """A process outside labtasker holding 4 GiB on GPU 0."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, "4"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "holding"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_gpu_held_by_another_process_is_skipped_until_it_frees(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    lab = Lab(tmp_path / "pinned", "[0]")
    lab.ok("queue", "add", "--gpus", "1", "--", sys.executable, "task.py", "0")
    dispatch = subprocess.Popen(
        lab.argv("dispatch", "--forever", "--hosts", str(lab.root / "hosts.toml")),
        cwd=lab.root, env=lab.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def waiting_reason() -> str | None:
            (task,) = lab.tasks()
            assert task["state"] == "pending", task
            reason = task["reason"] or ""
            return reason if "used by" in reason else None

        reason = _until("the task to say GPU 0 is used by another process", waiting_reason, 120)
        assert "GPU 0" in reason, reason
        if "pid" in reason:  # nvidia-smi shows the owner where the PID namespace allows it
            assert f"pid {holder.pid}" in reason, reason
        holder.kill()
        holder.wait(timeout=60)
        _until("the task to succeed", lambda: lab.tasks()[0]["state"] == "succeeded")
        (task,) = lab.tasks()
        assert task["gpus"] == [0] and task["result"]["visible"] == "0"
    finally:
        dispatch.send_signal(signal.SIGINT)
        try:
            out, err = dispatch.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            dispatch.kill()
            out, err = dispatch.communicate()
    assert "Traceback" not in out + err, out + err
