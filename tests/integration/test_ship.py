"""Project snapshots shipped to real sshd hosts: the code is only on the controller, each task runs
in the snapshot it was queued with, in a working directory of its own; only missing files cross;
a cut transfer resumes and never leaves a snapshot that looks complete; clean-up keeps what
unfinished tasks need; a host with ``workdir`` is unchanged (docs/hosts.md, "Shipping the
project"). Through the real CLI; the hosts' users are ordinary users."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from dispatcher.store.queue import Store
from tests.integration.conftest import Lab, finish, wait
from tests.sshd import SshdHost

#: The project's script: records what its working directory holds, tries to change a file of
#: the tree, and (with a gate directory) waits until the other run has started too.
CHECK_PY = """\
import json, os, sys, time
out = {"version": open("version.txt").read(), "cwd": os.getcwd()}
with open("made.txt", "w") as f:
    f.write(os.environ["LABTASKER_RUN_ID"])
try:
    with open("version.txt", "a") as f:
        f.write("changed by a run\\n")
    out["wrote_tree"] = True
except OSError:
    out["wrote_tree"] = False
if len(sys.argv) > 1:
    gate = sys.argv[1]
    open(os.path.join(gate, os.environ["LABTASKER_RUN_ID"]), "w").close()
    for _ in range(3000):
        if len(os.listdir(gate)) >= 2:
            break
        time.sleep(0.02)
out["entries"] = sorted(os.listdir("."))
out["made"] = open("made.txt").read()
out["version_after"] = open("version.txt").read()
with open(os.environ["LABTASKER_RESULT"], "w") as f:
    json.dump(out, f)
"""


def project(lab: Lab, version: str = "v1") -> None:
    """The project in the controller's directory: check.py, version.txt and a package."""
    (lab.root / "check.py").write_text(CHECK_PY)
    (lab.root / "version.txt").write_text(f"{version}\n")
    (lab.root / "pkg").mkdir(exist_ok=True)
    (lab.root / "pkg" / "model.py").write_text("LAYERS = 3\n")


def ship_hosts(lab: Lab, *names: str, extra: str = "") -> str:
    """hosts.toml without ``workdir`` (so every host ships), one slot each, a state dir of this
    test's own; returns that state dir (relative to each host's home)."""
    state = f".lt-{uuid.uuid4().hex[:8]}"
    text = f'[defaults]\nkeepalive_interval = 1\ngpus = 0\nslots = 1\nstate_dir = "~/{state}"\n'
    text += 'outputs = ["made.txt"]\n' + extra
    text += "".join(f"[hosts.{n}]\n" for n in names)
    lab.write_hosts(text)
    return state


def store(host: SshdHost, state: str) -> Path:
    return host.home / state / "store"


def blobs(host: SshdHost, state: str) -> set[str]:
    root = store(host, state) / "blobs"
    return {p.name for p in root.glob("*/*")} if root.is_dir() else set()


def snapshots(host: SshdHost, state: str) -> list[str]:
    root = store(host, state) / "snapshots"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def results(lab: Lab) -> dict[int, dict[str, Any]]:
    return {t["id"]: t["result"] for t in lab.tasks()}


def sent_lines(text: str) -> list[tuple[str, int]]:
    """The dispatch log's "HOST: snapshot ID sent: N files" lines as (host, N)."""
    found = re.findall(r"(\S+): snapshot \w+ sent: (\d+) files?", text)
    return [(host, int(n)) for host, n in found]


def check_cmd(gate: Path | None = None) -> str:
    return "python3 check.py" + (f" {gate}" if gate else "")


def gate_dir(lab: Lab) -> Path:
    gate = lab.shared / f"gate-{uuid.uuid4().hex[:6]}"
    gate.mkdir()
    gate.chmod(0o777)
    return gate


def test_a_sweep_runs_the_code_it_was_queued_with_on_two_servers(lab: Lab) -> None:
    project(lab)
    state = ship_hosts(lab, "cpu", "gpu1")
    gate = gate_dir(lab)
    first = lab.add_cmd(check_cmd(gate) + " %{x}", "--grid", "x=1,2")
    (lab.root / "version.txt").write_text("v2\n")  # edited after add
    later = lab.add_cmd(check_cmd())
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Done: 3 succeeded" in done.stdout
    got = results(lab)
    assert [got[i]["version"] for i in first] == ["v1\n", "v1\n"]
    assert got[later[0]]["version"] == "v2\n"
    # The two gated runs were running at once: one on each server (one slot each).
    assert {lab.task(i)["host"] for i in first} == {"cpu", "gpu1"}
    for task_id in (*first, *later):
        task = lab.task(task_id)
        host = lab.hosts[task["host"]]
        assert got[task_id]["cwd"] == str(host.home / state / "cwd" / task["run_id"])
        assert sorted(got[task_id]["entries"]) == [
            "check.py", "made.txt", "pkg", "version.txt"
        ]  # fmt: skip
        # The file the run made is its own, and the host's `outputs` glob found it.
        copied = lab.root / "queue.outputs" / str(task_id) / "made.txt"
        assert copied.read_text() == task["run_id"]


def test_concurrent_runs_are_isolated_and_cannot_change_the_tree(lab: Lab) -> None:
    project(lab)
    state = ship_hosts(lab, "cpu", extra="")
    lab.write_hosts((lab.root / "hosts.toml").read_text().replace("slots = 1", "slots = 2"))
    gate = gate_dir(lab)
    ids = lab.add_cmd(check_cmd(gate) + " %{x}", "--grid", "x=1,2")
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    got = results(lab)
    runs = {lab.task(i)["run_id"] for i in ids}
    for task_id in ids:
        result = got[task_id]
        assert isinstance(result, dict)
        assert result["made"] == lab.task(task_id)["run_id"]  # not the other run's made.txt
        assert result["entries"].count("made.txt") == 1
        assert not runs & set(result["entries"])
        assert result["wrote_tree"] is False  # the tree is read-only for an ordinary user
        assert result["version_after"] == "v1\n"
    (snapshot,) = snapshots(lab.hosts["cpu"], state)
    tree = store(lab.hosts["cpu"], state) / "snapshots" / snapshot
    assert (tree / "version.txt").read_text() == "v1\n"


def test_a_one_file_change_sends_one_file(lab: Lab) -> None:
    project(lab)
    for n in range(20):
        (lab.root / "pkg" / f"part{n}.py").write_text(f"PART = {n}\n")
    state = ship_hosts(lab, "cpu")
    lab.add_cmd(check_cmd())
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert sent_lines(done.stdout) == [("cpu", 23)]  # hosts.toml is never sent
    before = blobs(lab.hosts["cpu"], state)
    (lab.root / "pkg" / "part7.py").write_text("PART = 'seven'\n")
    lab.add_cmd(check_cmd())
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert sent_lines(done.stdout) == [("cpu", 1)]
    new = blobs(lab.hosts["cpu"], state) - before
    changed = hashlib.sha256(b"PART = 'seven'\n").hexdigest()
    assert changed in new and len(new) == 2  # the file, and the new snapshot's manifest
    assert len(snapshots(lab.hosts["cpu"], state)) == 2


def test_hosts_on_one_shared_home_receive_each_file_once(lab: Lab) -> None:
    project(lab)
    state = ship_hosts(lab, "nfs1", "nfs2")
    gate = gate_dir(lab)
    lab.add_cmd(check_cmd(gate) + " %{x}", "--grid", "x=1,2")
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert {t["host"] for t in lab.tasks()} == {"nfs1", "nfs2"}
    assert [n for _, n in sent_lines(done.stdout)] == [3]  # one host sent them, once
    assert len(blobs(lab.hosts["nfs1"], state)) == 4  # three files and the manifest


def big_project(lab: Lab, files: int = 80) -> dict[str, str]:
    """Incompressible files (1 MiB each), so a transfer lasts long enough to be cut."""
    project(lab)
    (lab.root / "data").mkdir()
    digests = {}
    for n in range(files):
        data = os.urandom(1024 * 1024)
        (lab.root / "data" / f"chunk{n:03}.bin").write_bytes(data)
        digests[f"data/chunk{n:03}.bin"] = hashlib.sha256(data).hexdigest()
    return digests


def assert_tree(host: SshdHost, state: str, digests: dict[str, str]) -> None:
    (snapshot,) = snapshots(host, state)
    tree = store(host, state) / "snapshots" / snapshot
    for rel, digest in digests.items():
        assert hashlib.sha256((tree / rel).read_bytes()).hexdigest() == digest, rel


def test_a_transfer_cut_by_a_dropped_connection_resumes(lab: Lab) -> None:
    digests = big_project(lab)
    state = ship_hosts(lab, "cpu")
    lab.add_cmd(check_cmd())
    host = lab.hosts["cpu"]
    proc = lab.start("dispatch")
    wait(lambda: len(blobs(host, state)) >= 2, "some files arrived")
    host.freeze()
    assert snapshots(host, state) == []  # not complete: nothing looks like a snapshot yet
    arrived = len(blobs(host, state))
    host.kill_connections()
    host.thaw()
    code, out, err = finish(proc, timeout=120)
    assert code == 0, (out, err)
    assert "Done: 1 succeeded" in out
    sent = sent_lines(out)
    assert arrived < 80 and len(sent) == 1 and sent[0][1] <= 84 - arrived  # only the rest
    assert_tree(host, state, digests)


def test_a_transfer_cut_by_killing_dispatch_resumes(lab: Lab) -> None:
    digests = big_project(lab)
    state = ship_hosts(lab, "cpu")
    lab.add_cmd(check_cmd())
    host = lab.hosts["cpu"]
    proc = lab.start("dispatch")
    wait(lambda: len(blobs(host, state)) >= 2, "some files arrived")
    proc.kill()  # kill -9: no clean-up of any kind
    proc.communicate()
    assert snapshots(host, state) == []
    arrived = len(blobs(host, state))
    done = lab.run("dispatch", timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Done: 1 succeeded" in done.stdout
    (sent,) = sent_lines(done.stdout)
    assert arrived < 80 and sent[1] <= 84 - arrived  # only what had not arrived
    assert_tree(host, state, digests)


def test_clean_up_keeps_what_unfinished_tasks_need(lab: Lab) -> None:
    project(lab)
    state = ship_hosts(lab, "cpu")
    host = lab.hosts["cpu"]
    (ran,) = lab.add_cmd(check_cmd())
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    work = host.home / state / "cwd" / lab.task(ran)["run_id"]
    first = snapshots(host, state)
    # Ended, but within `keep`: the run's directory (and so its snapshot) stays.
    assert "removed 0 ended run directories, 0 snapshots" in lab.ok("hosts", "gc")
    assert work.is_dir() and snapshots(host, state) == first
    (waiting,) = lab.add_cmd(check_cmd() + " --again")  # same code: the same snapshot, pending
    out = lab.ok("hosts", "gc", "--now")
    assert "cpu: removed 1 ended run directory, 0 snapshots" in out
    assert not work.exists() and snapshots(host, state) == first  # the pending task needs it
    before = blobs(host, state)
    lab.ok("queue", "cancel", str(waiting))
    out = lab.ok("hosts", "gc", "--now")
    assert "cpu: removed 0 ended run directories, 1 snapshot, 4 files" in out
    assert snapshots(host, state) == [] and blobs(host, state) == set() != before


def test_a_host_with_a_workdir_runs_there_and_receives_nothing(lab: Lab) -> None:
    project(lab)
    state = ship_hosts(lab, "cpu", extra=f'workdir = "{lab.shared}"\n')
    (lab.shared / "version.txt").write_text("by hand\n")
    (lab.shared / "version.txt").chmod(0o666)
    (lab.shared / "check.py").write_text(CHECK_PY)
    (lab.shared / "check.py").chmod(0o644)
    (task,) = lab.add_cmd(f"python3 {lab.shared / 'check.py'}")
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    result = lab.task(task)["result"]
    assert result["cwd"] == str(lab.shared) and result["version"] == "by hand\n"
    assert not store(lab.hosts["cpu"], state).exists() and sent_lines(done.stdout) == []


def test_the_local_host_runs_a_snapshot_too(lab: Lab) -> None:
    project(lab)
    lab.write_hosts("[hosts.local]\ngpus = 0\n")
    (task,) = lab.add_cmd(check_cmd())
    (lab.root / "version.txt").write_text("v2\n")
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    result = lab.task(task)["result"]
    assert result["version"] == "v1\n"
    assert result["cwd"] == str(lab.root / "queue.runs" / "cwd" / lab.task(task)["run_id"])
    assert json.loads(json.dumps(result))["made"] == lab.task(task)["run_id"]


def test_a_task_without_a_snapshot_runs_as_before(lab: Lab) -> None:
    project(lab)
    state = ship_hosts(lab, "cpu")
    (lab.shared / "check.py").write_text(CHECK_PY)
    (lab.shared / "check.py").chmod(0o644)
    (task,) = lab.add_cmd(f"cd {lab.shared} && python3 check.py")
    with Store(lab.db, lock_timeout=30).transaction() as tx:  # as if added before snapshots
        tx.con.execute("UPDATE tasks SET snapshot = NULL")
    (lab.shared / "version.txt").write_text("by hand\n")
    (lab.shared / "version.txt").chmod(0o666)
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert lab.task(task)["result"]["version"] == "by hand\n"
    assert sent_lines(done.stdout) == [] and snapshots(lab.hosts["cpu"], state) == []


def test_hosts_check_names_the_runs_directory_of_a_shipping_host(lab: Lab) -> None:
    state = ship_hosts(lab, "cpu")
    done = lab.run("hosts", "check")
    assert done.returncode == 0, (done.stdout, done.stderr)
    row = next(line for line in done.stdout.splitlines() if line.startswith("cpu"))
    assert f"{lab.hosts.cpu.home}/{state}/cwd/RUN_ID" in row, done.stdout


def test_a_snapshot_removed_by_clean_up_during_dispatch_is_sent_again(lab: Lab) -> None:
    project(lab)
    state = ship_hosts(lab, "cpu")
    host = lab.hosts["cpu"]
    (first,) = lab.add_cmd(check_cmd())
    proc = lab.start("dispatch", "--forever")
    wait(lambda: lab.task(first)["state"] == "succeeded", "the first task to succeed")
    out = lab.ok("hosts", "gc", "--now")  # nothing unfinished needs it: the snapshot goes
    assert "1 snapshot" in out and snapshots(host, state) == []
    (again,) = lab.add_cmd(check_cmd() + " && true")  # the same tree: the same snapshot id
    wait(lambda: lab.task(again)["state"] == "succeeded", "the second task to succeed")
    assert lab.task(again)["attempt"] == 1  # its launch was not lost: the snapshot came again
    proc.terminate()
    _, stdout, _ = finish(proc)
    assert len(sent_lines(stdout)) == 2, stdout  # once for each task


def test_a_run_that_made_nothing_leaves_its_directory_to_the_next(lab: Lab) -> None:
    project(lab)
    state = ship_hosts(lab, "cpu")
    ids = lab.add_cmd(
        "python3 -c 'import os; print(sorted(os.listdir()))' %{x}", "--grid", "x=1,2,3"
    )
    done = lab.run("dispatch")
    assert done.returncode == 0, (done.stdout, done.stderr)
    for task_id in ids:  # each saw the whole tree and nothing another run left
        assert "['check.py', 'pkg', 'version.txt']" in lab.ok("logs", str(task_id))
    cwd = lab.hosts.cpu.home / state / "cwd"
    assert sorted(p.name for p in cwd.iterdir()) == []  # nothing to keep: reused, not kept
    assert "removed 0 ended run directories" in lab.ok("hosts", "gc", "--now")
    (kept,) = lab.add_cmd(check_cmd())  # writes made.txt: its directory is kept
    assert lab.run("dispatch").returncode == 0
    assert [p.name for p in cwd.iterdir()] == [lab.task(kept)["run_id"]]
