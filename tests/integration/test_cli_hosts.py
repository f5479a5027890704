"""``labtasker hosts check`` through the CLI against real sshd hosts; a snapshot of its table."""

from __future__ import annotations

import os
import re

from tests.integration.conftest import Lab
from tests.sshd import FakeApp, FakeGpu


def normalise(text: str, lab: Lab) -> str:
    """Replace what differs between runs (users, paths, versions, pids); collapse padding."""
    text = text.replace(str(lab.shared), "WORKDIR").replace(f"pid {os.getpid()}", "pid PID")
    for alias in ("gpu2", "gpu1", "cpu"):
        text = text.replace(lab.hosts[alias].user, f"user-{alias}")
    text = re.sub(r"\b3\.\d+\.\d+\b", "3.X.Y", text)
    return "\n".join(re.sub(r" {2,}", "  ", line).rstrip() for line in text.splitlines())


def test_hosts_check_reports_each_host_on_one_line(lab: Lab) -> None:
    gpu1 = lab.hosts.gpu1
    (gpu,) = gpu1.default_gpus()
    gpu1.write_gpus([FakeGpu(0, gpu.uuid, memory_used=3000)])
    gpu1.write_apps([FakeApp(gpu.uuid, os.getpid(), 3000)])
    text = lab.hosts_toml("gpu2", "gpu1", "cpu").read_text()
    hosts = lab.write_hosts(text + '\n[hosts.gone]\nssh = "127.0.0.1:1"\n')
    done = lab.run("hosts", "check", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert normalise(done.stdout, lab) == "\n".join(
        [
            "host  python  user  workdir  gpus  problem",
            "gpu2  ok  3.X.Y  user-gpu2  WORKDIR  0: A100-SXM4-40GB 0/40960 MiB; 1: A100-SXM4-40GB"
            " 0/40960 MiB",
            "gpu1  ok  3.X.Y  user-gpu1  WORKDIR  0: A100-SXM4-40GB 3000/40960 MiB busy by root"
            " (pid PID)",
            "cpu  ok  3.X.Y  user-cpu  WORKDIR  none (CPU-only)",
            "gone  FAIL  gone (127.0.0.1:1): connection refused; is sshd running?",
            "",
            "host  gpu  memory (GiB)  free  used by",
            "gpu2  0  0.0/40.0  40.0  free",
            "  1  0.0/40.0  40.0  free",
            "gpu1  0  2.9/40.0  37.1  2.9 GiB used by root (pid PID)",
        ]
    )
    assert not lab.db.exists()  # no queue here: none was made to read tasks from


def test_hosts_check_exits_0_when_every_host_works(lab: Lab) -> None:
    hosts = lab.hosts_toml("behind", "cpu")
    done = lab.run("hosts", "check", "--hosts", str(hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = normalise(done.stdout, lab).splitlines()
    assert lines[0] == "host  python  user  workdir  gpus"  # no problem column when none failed
    assert lines[1].startswith("behind  ok  3.X.Y") and lines[1].endswith(
        "0: A100-SXM4-40GB 0/40960 MiB"
    )


def test_hosts_check_says_when_declarations_alone_count(lab: Lab) -> None:
    gpu1 = lab.hosts.gpu1
    (gpu,) = gpu1.default_gpus()
    gpu1.write_gpus([FakeGpu(0, gpu.uuid, memory_used=3000)])
    # A driver that gives no per-process memory: nvidia-smi prints [N/A] for it.
    (gpu1.fake_bin / "apps.csv").write_text(f"{gpu.uuid}, {os.getpid()}, [N/A], python\n")
    done = lab.run("hosts", "check", "--hosts", str(lab.hosts_toml("gpu1")))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert (
        "nvidia-smi gives no per-process memory here: tasks sharing a GPU count as using what"
        " they declared (--gpu-memory)" in " ".join(done.stdout.split())
    )
