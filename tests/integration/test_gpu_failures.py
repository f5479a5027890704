"""Failures named by what they died of (CUDA out of memory, a missing module) through the real
CLI on sshd hosts, and the retry of a CUDA out-of-memory only on a GPU with more room."""

from __future__ import annotations

import subprocess
from typing import Any

from dispatcher.store.queue import Store
from tests.integration.conftest import Lab, finish, wait
from tests.integration.test_gpu_sharing import A100, GIB_MIB, H100, GpuLab, gpus
from tests.sshd import FakeApp, FakeGpu

__all__ = ["gpus"]  # the fixture

OOM_TASK = r"""#!/bin/sh
# oom_task.sh LIVE MIB GATE: attempt 1 holds MIB on its GPUs, waits for GATE, then dies of CUDA
# out-of-memory as PyTorch reports it; later attempts succeed.
live=$1 mib=$2 gate=$3
if [ "$LABTASKER_ATTEMPT" -le 1 ]; then
    for i in $(echo "$CUDA_VISIBLE_DEVICES" | tr , ' '); do echo "$i, $$, $mib" >> "$live"; done
    n=0
    while [ ! -e "$gate" ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n + 1)); done
    echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 30.00 GiB" >&2
    exit 1
fi
echo "attempt $LABTASKER_ATTEMPT on GPU $CUDA_VISIBLE_DEVICES"
"""


def test_a_cuda_oom_is_named_and_retried_only_on_a_gpu_with_more_room(
    lab: Lab, gpus: GpuLab
) -> None:
    host = lab.hosts.gpu2
    script = lab.shared / "oom_task.sh"
    script.write_text(OOM_TASK)
    script.chmod(0o755)
    # GPU 0: a whole 40 GiB card. GPU 1: 80 GiB, but someone else holds 75 of it.
    other = subprocess.Popen(["sleep", "600"])
    try:
        uuids = [f"GPU-{host.alias}-0", f"GPU-{host.alias}-1"]
        host.write_gpus([FakeGpu(0, uuids[0], A100, 0, 40 * GIB_MIB),
                         FakeGpu(1, uuids[1], H100, 75 * GIB_MIB, 80 * GIB_MIB)])  # fmt: skip
        host.write_apps([FakeApp(uuids[1], other.pid, 75 * GIB_MIB)])
        hosts = lab.hosts_toml("gpu2")
        cmd = f"{script} {host.fake_bin / 'live.csv'} {20 * GIB_MIB} {gpus.gates / 'a'}"
        (task,) = lab.add_cmd(cmd, "--gpu-memory", "10GiB", "--max-attempts", "2")
        proc = lab.start("dispatch", "--hosts", str(hosts), "--forever")
        assert lab.wait_task(task, ["running"])["gpus"] == [0]  # GPU 1 has 5 GiB left

        def held() -> bool:
            view = gpus.gpu_view("gpu2")
            return bool(view) and view[0].get("used_mib") == 20 * GIB_MIB

        wait(held, "the dispatcher sees what the task holds")
        gpus.open("a")  # it dies of CUDA out of memory

        def requeued() -> dict[str, Any] | None:
            t = lab.task(task)
            return t if t["state"] == "pending" and t["attempt"] == 1 else None

        wait(requeued, "the task is requeued")
        with Store(lab.db, lock_timeout=30).transaction() as tx:
            (first,) = tx.attempts(task)
        assert first.reason == "CUDA out of memory (exit 1)"
        shown = " ".join(lab.ok("queue", "show", str(task)).split())
        assert "attempt 1 " in shown and "CUDA out of memory (exit 1)" in shown, shown
        # It had 40 GiB free on GPU 0: the retry asks for more, which only GPU 1 could give,
        # and GPU 1 has 5 free while the other user's job runs: it waits.
        assert lab.task(task)["gpu_memory"] == 40 * 2**30 + 2**20

        def waits() -> str | None:
            reason = lab.task(task)["reason"] or ""
            return reason if reason.startswith("no GPU with 40 GiB free") else None

        wait(waits, "the retry waits for a GPU with more room")
        host.write_gpus([FakeGpu(0, uuids[0], A100, 0, 40 * GIB_MIB),
                         FakeGpu(1, uuids[1], H100, 0, 80 * GIB_MIB)])  # fmt: skip
        host.write_apps([])
        done = lab.wait_task(task, ["succeeded", "failed"])
        assert (done["state"], done["gpus"], done["attempt"]) == ("succeeded", [1], 2)
    finally:
        other.kill()
        other.wait()
    proc.send_signal(2)
    finish(proc)


def test_a_missing_module_and_a_cuda_oom_are_named_in_ls_show_and_results(lab: Lab) -> None:
    hosts = lab.hosts_toml("cpu")
    (task,) = lab.add_cmd("python3 -c 'import no_such_module_xyz'", "--gpus", "0")
    oom = "echo 'RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB' >&2; exit 1"
    (cuda,) = lab.add_cmd(oom, "--gpus", "0")
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert lab.task(task)["reason"] == "missing module no_such_module_xyz (exit 1)"
    assert f"task {task} failed on cpu (missing module no_such_module_xyz (exit 1))" in done.stdout
    listed = {t["id"]: t for t in lab.cli_tasks()}
    assert listed[task]["reason"] == "missing module no_such_module_xyz (exit 1)"
    assert listed[cuda]["reason"] == "CUDA out of memory (exit 1)"
    for command in (["queue", "ls"], ["queue", "show", str(task)], ["results"]):
        shown = " ".join(lab.ok(*command).split())  # as one line, however the table wraps
        assert "missing module no_such_module_xyz (exit 1)" in shown, (command, shown)
    for command in (["queue", "ls"], ["queue", "show", str(cuda)], ["results"]):
        shown = " ".join(lab.ok(*command).split())
        assert "CUDA out of memory (exit 1)" in shown, (command, shown)
