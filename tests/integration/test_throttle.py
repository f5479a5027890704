"""``queue add --max-running``: a real dispatch on the ``local`` host (no SSH) holds a sweep to its
limit while free slots remain, then runs the rest; checked from the queue's own times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dispatcher.store.queue import Store

REPO = Path(__file__).resolve().parents[2]
#: Generous: the suite runs on loaded 2-core machines; passing runs finish far sooner.
DEADLINE = 60.0
#: Each task waits for this file, so the test decides when the first ones may finish.
GATE = """
import os, sys, time
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.02)
"""


def test_a_sweep_never_runs_more_than_its_max_running(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        "[hosts.local]\ngpus = 0\nslots = 8\n"
        f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n"
        f"workdir = {json.dumps(str(tmp_path / 'work'))}\n"
    )
    gate, go = tmp_path / "gate.py", tmp_path / "go"
    gate.write_text(GATE)
    db = tmp_path / "queue.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    env.update(LABTASKER_DB=str(db), LABTASKER_LOCK_TIMEOUT="30", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)

    def cli(*args: str) -> list[str]:
        return [sys.executable, "-m", "dispatcher", *args]

    added = subprocess.run(
        cli("queue", "add", "--grid", "i=1,2,3,4,5,6", "--max-running", "2", "--gpus", "0",
            "--json", "--", sys.executable, str(gate), str(go), "%{i}"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEADLINE, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    ids = json.loads(added.stdout)
    store = Store(db, lock_timeout=30)
    dispatch = subprocess.Popen(
        cli("dispatch", "--hosts", str(hosts)), cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Held: two run, four wait although six slots are free; the next ones in line say why
        # (the store hands the planner only the first max_running pending tasks of a sweep).
        deadline = time.monotonic() + DEADLINE
        while True:
            tasks = store.tasks()
            active = [t for t in tasks if t.state in ("launching", "running")]
            why = f"sweep batch {ids[0]} at its limit of 2 running"
            held = [t for t in tasks if t.state == "pending" and t.reason == why]
            if len(active) == 2 and len(held) == 2:
                break
            assert len(active) <= 2, [(t.id, t.state) for t in tasks]
            assert time.monotonic() < deadline and dispatch.poll() is None, (
                [(t.id, t.state, t.reason) for t in tasks], dispatch.poll(),
            )  # fmt: skip
            time.sleep(0.05)  # polling interval, not synchronisation
        go.touch()
        out, err = dispatch.communicate(timeout=DEADLINE)
    finally:
        if dispatch.poll() is None:
            dispatch.kill()
            dispatch.communicate()
    assert dispatch.returncode == 0, (out, err)
    tasks = store.tasks()
    assert [t.state for t in tasks] == ["succeeded"] * 6
    spans = [(t.started_at, t.finished_at) for t in tasks]
    assert all(s is not None and f is not None for s, f in spans)
    for start, _ in spans:  # at each start, how many runs had started and not yet finished
        overlapping = sum(1 for s, f in spans if s <= start < f)  # type: ignore[operator,misc]
        assert overlapping <= 2, spans
