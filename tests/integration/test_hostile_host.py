"""A host that lies: its helper is replaced by a script that answers with crafted messages.

gpu1's ``python`` in hosts.toml names ``hostile.py``, which ignores the bootstrap, says hello with
the right protocol version and then misbehaves as its scenario says. Through the real CLI and sshd:
dispatch prints one ``gpu1: protocol violation: ...`` line, writes nothing outside the queue's
own files, keeps the queue readable, and the honest host ``cpu`` finishes every task.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from dispatcher.remote import protocol
from tests.integration.conftest import Lab, finish

HOSTILE = r"""#!/usr/bin/python3
import base64, json, os, sys
SCENARIO = %(scenario)r
VERSION = %(version)d
MIB = 1024 * 1024


def send(obj):
    os.write(1, (json.dumps(obj) + "\n").encode())


def stream(head, total, tail=b""):
    os.write(1, head)
    chunk = b"a" * MIB
    for _ in range(total // MIB):
        os.write(1, chunk)
    os.write(1, tail)


def report(run_id, **extra):
    rep = {"run_id": run_id, "state": "exited", "exit_code": 0, "log_size": 5,
           "log": base64.b64encode(b"owned").decode(), "timed_out": False, "cancelled": False}
    rep.update(extra)
    return {"event": "exit", "run": rep}


def serve():
    os.write(1, b"have\n")
    send({"event": "hello", "version": VERSION, "python": "3.11", "user": "x",
          "state_dir": "/nowhere", "pid": os.getpid()})
    if SCENARIO == "traversal":
        send(report("../../escaped"))
    elif SCENARIO == "unknown-run":
        send(report("t99-a1-0123abcd"))
    elif SCENARIO == "result-1gb":
        stream(b'{"event": "exit", "run": {"run_id": "t1-a1-x", "result": {"x": "', 1024 * MIB,
               b'"}}}\n')
    for line in sys.stdin:
        req = json.loads(line)
        op, rid = req["op"], req["id"]
        if op == "gpus" and SCENARIO == "huge-line":
            stream(b'{"id": %%d, "ok": true, "pad": "' %% rid, 40 * MIB, b'"}\n')
        elif op == "gpus" and SCENARIO == "endless-line":
            stream(b'{"id": %%d, "ok": true, "pad": "' %% rid, 1 << 40)
        elif op == "gpus" and SCENARIO == "bad-json":
            os.write(1, b'{"id": %%d, "ok": tru\n' %% rid)
        elif op == "gpus" and SCENARIO == "wrong-types":
            send({"id": rid, "ok": True, "gpus": "many", "processes": 7})
        elif op == "gpus":
            send({"id": rid, "ok": True, "gpus": [], "processes": [], "error": None})
        elif op == "launches":
            runs = [r["run_id"] for r in req["runs"]]
            send({"id": rid, "ok": True, "runs": {r: {"status": "started"} for r in runs}})
            if SCENARIO == "nul-reason":
                send(report(runs[0], exit_code=1, error="bad\u0000thing"))
            elif SCENARIO == "huge-reason":
                send(report(runs[0], exit_code=1, error="x" * MIB))
        else:
            send({"id": rid, "ok": True})


try:
    serve()
except (BrokenPipeError, ConnectionResetError):
    pass
"""

SCENARIOS = [
    "traversal",
    "unknown-run",
    "result-1gb",
    "huge-line",
    "endless-line",
    "bad-json",
    "wrong-types",
    "nul-reason",
    "huge-reason",
]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def hostile_hosts(lab: Lab, scenario: str, reasons: Path) -> None:
    script = lab.shared / "hostile.py"
    script.write_text(HOSTILE % {"scenario": scenario, "version": protocol.PROTOCOL_VERSION})
    script.chmod(0o755)
    reasons.touch()
    reasons.chmod(0o666)
    hook = f'printf "%s\\n" "$LABTASKER_REASON" | wc -c >> {reasons}'
    lab.write_hosts(
        f"[controller]\non_finish = {json.dumps(hook)}\n\n"
        f'[defaults]\nworkdir = "{lab.shared}"\nkeepalive_interval = 1\n\n'
        f'[hosts.gpu1]\npython = "{script}"\nslots = 2\nlost_after = "1s"\n\n'
        "[hosts.cpu]\nslots = 1\n"
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_hostile_host_is_dropped_and_the_others_finish(lab: Lab, scenario: str) -> None:
    reasons = lab.shared / "reasons.txt"
    hostile_hosts(lab, scenario, reasons)
    ids = lab.add_cmd("sleep 0.5; echo task %{n}", "--grid", "n=1,2,3")
    outside = lab.root.parent
    before = files_under(outside)

    code, out, err = finish(lab.start("dispatch"), timeout=120)

    # Nothing written outside the queue's own files (queue.duckdb, queue.logs/, ...).
    new = files_under(outside) - before
    ours = [p for p in new if p.is_relative_to(lab.root) and p.relative_to(lab.root).parts]
    strays = set(new) - {p for p in ours if p.relative_to(lab.root).parts[0].startswith("queue")}
    assert not strays, strays
    assert not (lab.db.with_name("queue.logs") / "t99-a1-0123abcd.log").exists()
    said = out + err
    lines = [x for x in said.splitlines() if "gpu1: protocol violation:" in x]
    assert len(lines) == 1, said
    assert "Traceback" not in said, said
    assert code == 0, said
    # The queue is intact and every task ran on the honest host.
    tasks = {t["id"]: t for t in lab.cli_tasks()}
    assert {i: (tasks[i]["state"], tasks[i]["host"]) for i in ids} == {
        i: ("succeeded", "cpu") for i in ids
    }
    # No reason the hook saw carries the host's NUL or megabyte.
    assert all(int(n) < 1000 for n in reasons.read_text().split()), reasons.read_text()
    if scenario == "result-1gb":
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        assert peak_kib < 512 * 1024, f"a child process peaked at {peak_kib} KiB"
