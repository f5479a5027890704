"""Real NVIDIA GPUs and PyTorch: GPUs shared by memory, and CUDA out-of-memory named.

Skipped where no GPU or PyTorch is usable (see test_real_gpu.py, whose lab and checks this
reuses). At most a few minutes on one GPU. What it proves, with the real driver's nvidia-smi:

- two tasks with ``--gpu-memory`` run on one GPU at the same time (from their own timestamps)
  and both succeed;
- a task that allocates past the card's memory fails with the reason "CUDA out of memory".
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.gpu.test_real_gpu import Lab, _ts, pytestmark

__all__ = ["pytestmark"]  # skipped as test_real_gpu.py is: no GPU, no PyTorch

SHARE = """\
import json, os, sys, time
import torch
start = time.time()
x = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB, well under the declaration
torch.cuda.synchronize()
time.sleep(8)
with open(os.environ["LABTASKER_RESULT"], "w") as f:
    json.dump({"t0": start, "t1": time.time(), "visible": os.environ["CUDA_VISIBLE_DEVICES"]}, f)
"""

TOO_BIG = """\
import torch
total = torch.cuda.get_device_properties(0).total_memory
torch.empty(2 * total, dtype=torch.uint8, device="cuda")
"""


def test_two_tasks_share_one_gpu_at_once_and_both_succeed(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "share", "[0]")
    (lab.root / "work" / "share.py").write_text(SHARE)
    lab.ok(
        "queue", "add", "--gpu-memory", "3GiB", "--grid", "i=1,2",
        "--", sys.executable, "share.py", "%{i}",
    )  # fmt: skip
    done = lab.cli("dispatch", "--hosts", str(lab.root / "hosts.toml"))
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = lab.tasks()
    assert [first["state"], second["state"]] == ["succeeded", "succeeded"]
    assert first["gpus"] == second["gpus"] == [0]
    a, b = first["result"], second["result"]
    assert a["t0"] < b["t1"] and b["t0"] < a["t1"], f"they did not run at once: {a} {b}"
    assert _ts(first["started_at"]) < _ts(second["finished_at"])


def test_allocating_past_the_card_fails_with_cuda_out_of_memory(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "oom", "[0]")
    (lab.root / "work" / "too_big.py").write_text(TOO_BIG)
    lab.ok("queue", "add", "--gpus", "1", "--", sys.executable, "too_big.py")
    done = lab.cli("dispatch", "--hosts", str(lab.root / "hosts.toml"))
    assert done.returncode == 1, done.stdout + done.stderr
    (task,) = lab.tasks()
    assert task["state"] == "failed"
    assert task["reason"].startswith("CUDA out of memory"), task["reason"]
