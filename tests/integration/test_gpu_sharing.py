"""GPUs shared by memory, GPU constraints and lab etiquette, through the real CLI on sshd hosts.

Tasks run ``gpu_task.sh``: it appends a row per GPU of CUDA_VISIBLE_DEVICES to the stub
nvidia-smi's live table (so the card shows the memory it holds, as a real one would), records
where it ran, and waits for its gate file before it exits.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.dispatch.logs import read_status_file
from tests.integration.conftest import Lab, finish, wait
from tests.sshd import FakeApp, FakeGpu, SshdHost

GPU_TASK = r"""#!/bin/sh
# gpu_task.sh LIVE MIB GATE RECORDS: hold MIB on each of our GPUs until GATE exists.
live=$1 mib=$2 gate=$3 records=$4
for i in $(echo "$CUDA_VISIBLE_DEVICES" | tr , ' '); do echo "$i, $$, $mib" >> "$live"; done
echo "$LABTASKER_TASK_ID $CUDA_VISIBLE_DEVICES" >> "$records"
n=0
while [ ! -e "$gate" ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n + 1)); done
"""
GIB_MIB = 1024
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-40GB"


class GpuLab:
    """The lab, a gate directory and the task script."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.script = lab.shared / "gpu_task.sh"
        self.script.write_text(GPU_TASK)
        self.script.chmod(0o755)
        self.gates = lab.shared / "gates"
        self.gates.mkdir(mode=0o777)
        self.gates.chmod(0o777)
        self.records = lab.shared / "gpu_records.txt"
        self.records.touch()
        self.records.chmod(0o666)

    def cards(self, host: SshdHost, *specs: tuple[str, int]) -> None:
        """Give ``host`` these GPUs: (name, GiB) each, idle."""
        uuids = [f"GPU-{host.alias}-{i}" for i in range(len(specs))]
        host.write_gpus(
            [
                FakeGpu(i, u, n, 0, gib * GIB_MIB)
                for i, (u, (n, gib)) in enumerate(zip(uuids, specs, strict=True))
            ]
        )

    def add(self, host: SshdHost, name: str, uses_gib: int, *options: str) -> int:
        """One task that holds ``uses_gib`` GiB on each of its GPUs until ``open(name)``."""
        live = host.fake_bin / "live.csv"
        gate = self.gates / name
        cmd = f"{self.script} {live} {uses_gib * GIB_MIB} {gate} {self.records} {name}"
        (task_id,) = self.lab.add_cmd(cmd, *options)
        return task_id

    def open(self, *names: str) -> None:
        for name in names:
            (self.gates / name).touch()

    def gpu_view(self, host: str) -> list[dict[str, Any]]:
        """The dispatcher's GPU view of ``host`` from its status file (``status --watch``)."""
        view = read_status_file(self.lab.db).hosts.get(host) or {}
        return list(view.get("gpus") or [])


@pytest.fixture
def gpus(lab: Lab) -> Iterator[GpuLab]:
    g = GpuLab(lab)
    try:
        yield g
    finally:
        g.gates.mkdir(exist_ok=True)
        for i in range(64):
            (g.gates / f"all{i}").touch()
        for name in ("a", "b", "c", "d", "e", "x", "big", "one", "two", "three", "four"):
            (g.gates / name).touch()


def test_small_tasks_pack_one_card_while_the_other_stays_whole(lab: Lab, gpus: GpuLab) -> None:
    host = lab.hosts.gpu2
    gpus.cards(host, (H100, 80), (A100, 40))
    hosts = lab.hosts_toml("gpu2")
    small = [gpus.add(host, n, 8, "--gpu-memory", "10GiB") for n in ("one", "two", "three", "four")]
    whole = gpus.add(host, "big", 30, "--gpus", "1")
    proc = lab.start("dispatch", "--hosts", str(hosts))
    for i in [*small, whole]:
        lab.wait_task(i, ["running"])
    assert [lab.task(i)["gpus"] for i in small] == [[0]] * 4  # all four share the 80 GiB card
    assert lab.task(whole)["gpus"] == [1]  # the 40 GiB card stays whole for the --gpus 1 task
    listed = {t["id"]: t for t in lab.cli_tasks()}
    assert listed[small[0]]["gpu_memory"] == 10 * 2**30 and listed[whole]["gpu_memory"] is None
    # Nothing waits now: the GPU view still follows the running tasks (a fresh nvidia-smi reading).

    def shared_view() -> list[dict[str, Any]] | None:
        view = gpus.gpu_view("gpu2")
        return view if view and view[0].get("used_mib") == 4 * 8 * GIB_MIB else None

    view = wait(shared_view, "the status file shows the four tasks' memory")
    assert isinstance(view, list)
    assert view[0]["shared_by"] == small and view[0]["declared_mib"] == 40 * GIB_MIB
    assert view[0]["free_mib"] == 40 * GIB_MIB  # 80 - 4 x 10 declared (each uses only 8)
    assert view[1]["task"] == whole
    # `hosts check` shows the same: memory used, declared by the four sharing tasks, free.
    check = lab.run("hosts", "check", "--hosts", str(hosts))
    assert check.returncode == 0, (check.stdout, check.stderr)
    lines = check.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if "declared" in line) :]
    assert table[0].split() == ["host", "gpu", "memory", "(GiB)", "declared", "free", "used", "by"]
    ids = ", ".join(map(str, small))
    assert table[1].split() == ["gpu2", "0", "32.0/80.0", "40.0", "40.0", *f"tasks {ids}".split()]
    assert table[2].split() == ["1", "30.0/40.0", "10.0", "task", str(whole)]
    assert "busy" not in check.stdout  # the processes on the cards are our tasks
    gpus.open("one", "two", "three", "four", "big")
    code, out, err = finish(proc)
    assert code == 0, (out, err)


def test_the_gpu_view_follows_running_tasks_at_most_every_refresh_interval(
    lab: Lab, gpus: GpuLab
) -> None:
    host = lab.hosts.gpu1
    gpus.cards(host, (H100, 80))
    calls = host.fake_bin / "calls.log"
    calls.touch()
    calls.chmod(0o666)
    hosts = lab.hosts_toml("gpu1")
    task = gpus.add(host, "a", 8, "--gpu-memory", "10GiB")
    proc = lab.start("dispatch", "--hosts", str(hosts))
    lab.wait_task(task, ["running"])

    def fresh() -> bool:  # nothing is pending: the reading after the task started
        view = gpus.gpu_view("gpu1")
        return bool(view) and view[0].get("used_mib") == 8 * GIB_MIB

    wait(fresh, "the status file shows the running task's memory")
    seen = len(calls.read_text().split())
    wait(lambda: len(calls.read_text().split()) >= seen + 2, "two more readings while it runs")
    assert lab.task(task)["state"] == "running"
    stamps = [float(t) for t in calls.read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 4.9, gaps  # never more often than gpu_refresh (5 s) per host
    gpus.open("a")
    code, out, err = finish(proc)
    assert code == 0, (out, err)


def test_a_card_never_holds_more_declared_memory_than_it_has(lab: Lab, gpus: GpuLab) -> None:
    host = lab.hosts.gpu1
    gpus.cards(host, (A100, 40))
    hosts = lab.hosts_toml("gpu1")
    journal = lab.shared / "journal.txt"
    journal.touch()
    journal.chmod(0o666)
    cmd = f"echo s >> {journal}; sleep 0.3; echo e >> {journal}; true %{{i}}"
    lab.add_cmd(cmd, "--gpu-memory", "10GiB", "--grid", "i=" + ",".join(map(str, range(12))))
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert [t["gpus"] for t in lab.tasks()] == [[0]] * 12
    at_once, most = 0, 0
    for line in journal.read_text().split():  # the tasks' own order of starts and ends
        at_once += 1 if line == "s" else -1
        most = max(most, at_once)
    assert 1 <= most <= 4  # 4 x 10 GiB fill the 40 GiB card: never a fifth


def test_max_tasks_per_gpu_caps_the_tasks_sharing_a_card(lab: Lab, gpus: GpuLab) -> None:
    host = lab.hosts.gpu1
    gpus.cards(host, (H100, 80))
    hosts = lab.hosts_toml("gpu1", gpu1={"max_tasks_per_gpu": 2})
    journal = lab.shared / "journal.txt"
    journal.touch()
    journal.chmod(0o666)
    cmd = f"echo s >> {journal}; sleep 0.3; echo e >> {journal}; true %{{i}}"
    lab.add_cmd(cmd, "--gpu-memory", "5GiB", "--grid", "i=" + ",".join(map(str, range(8))))
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    at_once, most = 0, 0
    for line in journal.read_text().split():
        at_once += 1 if line == "s" else -1
        most = max(most, at_once)
    assert 1 <= most <= 2  # room for 16 such tasks, but never a third on the card


FREE_TASK = r"""#!/bin/sh
# free_task.sh LIVE MIB JOURNAL: hold MIB on our GPU, record what the card then shows (index,
# used, total) as the task's own reading, and hold it a second longer.
live=$1 mib=$2 journal=$3
echo "$CUDA_VISIBLE_DEVICES, $$, $mib" >> "$live"
"$(dirname "$live")/nvidia-smi" --query-gpu=index,memory.used,memory.total \
    --format=csv,noheader,nounits | grep "^$CUDA_VISIBLE_DEVICES," >> "$journal"
sleep 1
"""


def test_no_task_is_placed_where_its_memory_was_not_free(lab: Lab, gpus: GpuLab) -> None:
    host = lab.hosts.gpu2
    script = lab.shared / "free_task.sh"
    script.write_text(FREE_TASK)
    script.chmod(0o755)
    journal = lab.shared / "readings.txt"
    journal.touch()
    journal.chmod(0o666)
    other = subprocess.Popen(["sleep", "600"])  # someone else's 30 GiB job on the H100
    try:
        uuids = [f"GPU-{host.alias}-0", f"GPU-{host.alias}-1"]
        host.write_gpus([FakeGpu(0, uuids[0], H100, 30 * GIB_MIB, 80 * GIB_MIB),
                         FakeGpu(1, uuids[1], A100, 0, 40 * GIB_MIB)])  # fmt: skip
        host.write_apps([FakeApp(uuids[0], other.pid, 30 * GIB_MIB)])
        hosts = lab.hosts_toml("gpu2")
        live = host.fake_bin / "live.csv"
        for gib in (8, 12, 20):  # each task uses exactly what it declares
            cmd = f"{script} {live} {gib * GIB_MIB} {journal} %{{i}}"
            lab.add_cmd(cmd, "--gpu-memory", f"{gib}GiB", "--grid", "i=1,2,3,4")
        done = lab.run("dispatch", "--hosts", str(hosts))
    finally:
        other.kill()
        other.wait()
    assert done.returncode == 0, (done.stdout, done.stderr)
    readings = [[int(x) for x in line.split(",")] for line in journal.read_text().splitlines()]
    assert len(readings) == 12
    # Each task's own reading, taken with its memory held: the card never holds more than it has.
    assert all(used <= total for _, used, total in readings), str(readings)
    assert any(i == 0 and used >= (30 + 8 + 8) * GIB_MIB for i, used, _ in readings)  # shared


def test_another_users_process_mid_sweep_leaves_no_room_until_it_ends(
    lab: Lab, gpus: GpuLab
) -> None:
    host = lab.hosts.gpu1
    gpus.cards(host, (H100, 80))
    hosts = lab.hosts_toml("gpu1")
    first = gpus.add(host, "a", 30, "--gpu-memory", "30GiB")
    proc = lab.start("dispatch", "--hosts", str(hosts), "--forever")
    lab.wait_task(first, ["running"])
    # Someone else starts a 40 GiB job on the card: 80 - 30 ours - 40 theirs leaves 10 GiB.
    other = subprocess.Popen(["sleep", "600"])
    try:
        host.write_gpus([FakeGpu(0, f"GPU-{host.alias}-0", H100, 40 * GIB_MIB, 80 * GIB_MIB)])
        host.write_apps([FakeApp(f"GPU-{host.alias}-0", other.pid, 40 * GIB_MIB)])

        def seen() -> bool:
            view = gpus.gpu_view("gpu1")
            return bool(view) and view[0].get("used_mib") == 70 * GIB_MIB

        wait(seen, "the dispatcher sees the other user's memory")
        second = gpus.add(host, "b", 20, "--gpu-memory", "20GiB")

        def waits() -> str | None:
            reason = lab.task(second)["reason"] or ""
            return reason if reason.startswith("no GPU with 20 GiB free") else None

        reason = wait(waits, "the second task waits for room")
        assert "shared by task" in str(reason) and "10 GiB free" in str(reason)
        assert lab.task(second)["state"] == "pending"
        # Their job ends: the room is back, and the second task starts beside the first.
        host.write_gpus([FakeGpu(0, f"GPU-{host.alias}-0", H100, 0, 80 * GIB_MIB)])
        host.write_apps([])
        assert lab.wait_task(second, ["running"])["gpus"] == [0]
    finally:
        other.kill()
        other.wait()
    gpus.open("a", "b")
    lab.wait_task(first, ["succeeded"])
    lab.wait_task(second, ["succeeded"])
    proc.send_signal(2)
    finish(proc)


def test_a_task_using_more_than_it_declared_holds_what_it_uses(lab: Lab, gpus: GpuLab) -> None:
    host = lab.hosts.gpu1
    gpus.cards(host, (H100, 80))
    hosts = lab.hosts_toml("gpu1")
    greedy = gpus.add(host, "a", 60, "--gpu-memory", "10GiB")  # declares 10, takes 60
    proc = lab.start("dispatch", "--hosts", str(hosts), "--forever")
    lab.wait_task(greedy, ["running"])

    def seen() -> bool:
        view = gpus.gpu_view("gpu1")
        return bool(view) and view[0].get("free_mib") == 20 * GIB_MIB

    wait(seen, "the dispatcher sees the task's real use")
    late = gpus.add(host, "b", 1, "--gpu-memory", "30GiB")

    def waits() -> str | None:
        reason = lab.task(late)["reason"] or ""
        return reason if reason.startswith("no GPU with 30 GiB free") else None

    wait(waits, "the late task waits: 80 - 60 used leaves 20 GiB")
    gpus.open("a")
    assert lab.wait_task(late, ["running"])["gpus"] == [0]
    gpus.open("b")
    lab.wait_task(late, ["succeeded"])
    proc.send_signal(2)
    finish(proc)


def test_type_and_memory_constraints_wait_with_their_reasons(lab: Lab, gpus: GpuLab) -> None:
    gpus.cards(lab.hosts.gpu2, (A100, 40), (A100, 40))
    gpus.cards(lab.hosts.gpu1, (H100, 80))
    hosts = lab.hosts_toml("gpu2", "gpu1")
    h100 = gpus.add(lab.hosts.gpu1, "a", 1, "--gpu-type", "h100", "--gpus", "1")
    big = gpus.add(lab.hosts.gpu2, "b", 1, "--min-gpu-memory", "60GiB")
    v100 = gpus.add(lab.hosts.gpu2, "c", 1, "--gpu-type", "V100|T4")
    huge = gpus.add(lab.hosts.gpu2, "d", 1, "--min-gpu-memory", "100GiB")
    gpus.open("a", "b")
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert lab.task(h100)["host"] == "gpu1" and lab.task(big)["host"] == "gpu1"
    assert lab.task(v100)["reason"] == "no GPU of type V100|T4"
    assert lab.task(huge)["reason"] == "no GPU with at least 100 GiB"
    assert f"task {v100} cannot be placed: no GPU of type V100|T4" in done.stderr
    assert [lab.task(i)["state"] for i in (v100, huge)] == ["pending", "pending"]
    # Now the dispatcher has seen every host's GPUs: queue add refuses what none could take.
    refused = lab.run("queue", "add", "--hosts", str(hosts), "--gpu-type", "V100", "--", "true")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"{hosts}: no GPU of type V100 on any host" in refused.stderr
    assert "H100 80GB HBM3 (80 GiB)" in refused.stderr
    too_big = lab.run("queue", "add", "--hosts", str(hosts), "--gpu-memory", "90GiB", "--", "true")
    assert "no GPU with at least 90 GiB on any host" in too_big.stderr
    assert len(lab.tasks()) == 4  # nothing was added
    lab.ok("queue", "add", "--hosts", str(hosts), "--gpu-type", "H100", "--", "true")
    # A host the dispatcher never saw might have one: the task is added, and would wait.
    (lab.root / "hosts.toml").write_text(hosts.read_text() + "\n[hosts.cpu]\ngpus = [0]\n")
    lab.ok("queue", "add", "--gpu-type", "V100", "--", "true")  # ./hosts.toml by default
    assert len(lab.tasks()) == 6


def test_max_gpus_and_gpu_order(lab: Lab, gpus: GpuLab) -> None:
    host = lab.hosts.gpu2
    gpus.cards(host, (A100, 40), (A100, 40))
    hosts = lab.hosts_toml("gpu2", gpu2={"max_gpus": 1, "gpu_order": [1, 0]})
    first = gpus.add(host, "a", 1, "--gpus", "1")
    second = gpus.add(host, "b", 1, "--gpus", "1")
    proc = lab.start("dispatch", "--hosts", str(hosts))
    assert lab.wait_task(first, ["running"])["gpus"] == [1]  # gpu_order: GPU 1 first

    def waits() -> bool:
        return bool(lab.task(second)["reason"])

    wait(waits, "the second task waits: max_gpus = 1")
    assert lab.task(second)["state"] == "pending"
    gpus.open("a")
    assert lab.wait_task(second, ["running"])["gpus"] == [1]
    gpus.open("b")
    code, out, err = finish(proc)
    assert code == 0, (out, err)


def test_queue_add_takes_gpu_needs_from_a_sweep_file(lab: Lab, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'command = "echo %{x}"\ngpu_memory = "12GiB"\ngpu_type = "A100"\n'
        'min_gpu_memory = "40GiB"\n[grid]\nx = [1, 2]\n'
    )
    lab.ok("queue", "add", "--file", str(sweep))
    tasks = lab.cli_tasks()
    assert [(t["gpu_memory"], t["gpu_type"], t["min_gpu_memory"]) for t in tasks] == [
        (12 * 2**30, "A100", 40 * 2**30)
    ] * 2
    bad = lab.run("queue", "add", "--gpu-memory", "lots", "--", "echo", "hi")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1  # a usage error
    assert "gpu memory must be a positive size" in bad.stderr
