"""The finish side of a real dispatch: the on_finish hook, outputs copied back, live status.

Tasks write files in their working directory; the hook appends its LABTASKER_* environment to a
file. Runs on the ``local`` host and on an sshd host (outputs over SFTP on its connection).
"""

from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType

from dispatcher.cli.status import status_view
from dispatcher.store.queue import Store
from tests.integration.conftest import Lab, finish, wait

HOOK = """import json, os, sys
env = {k: v for k, v in os.environ.items() if k.startswith("LABTASKER_")}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(env) + "\\n")
"""
#: Writes out/r<i>.json, a file outside the workdir and a link to it, and fails for i == 2.
TASK = (
    "echo task %{i} && mkdir -p out && echo '{\"i\": %{i}}' > out/r%{i}.json"
    " && echo big > out/skip.txt"
    " && echo secret > ../outside-%{i}.txt && ln -sf ../../outside-%{i}.txt out/link%{i}.json"
    " && test %{i} -ne 2"
)


def setup(lab: Lab, host: str, workdir: Path, extra: str = "") -> tuple[Path, Path]:
    hook, hook_log = lab.root / "hook.py", lab.root / "hooks.jsonl"
    hook.write_text(HOOK)
    hosts = lab.write_hosts(
        f"[controller]\non_finish = '{sys.executable} {hook} {hook_log}'\n\n"
        f"[hosts.{host}]\nworkdir = '{workdir}'\ngpus = 0\noutputs = ['out/*.json']\n{extra}"
    )
    return hosts, hook_log


def hook_calls(path: Path) -> dict[int, dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return {int(e["LABTASKER_TASK_ID"]): e for e in map(json.loads, lines)}


def check_finish(lab: Lab, workdir: Path, host: str, hosts: Path, hook_log: Path) -> None:
    out = lab.ok("queue", "add", "--json", "--name", "fin", "--cmd", TASK, "--grid", "i=1,2")
    ids = list(json.loads(out)["ids"] if out.startswith("{") else json.loads(out))
    proc = lab.start("dispatch", "--hosts", str(hosts))
    code, stdout, stderr = finish(proc)
    assert code == 1, (stdout, stderr)  # task 2 failed on purpose
    calls = hook_calls(hook_log)
    assert sorted(calls) == ids
    ok, bad = calls[ids[0]], calls[ids[1]]
    assert (ok["LABTASKER_STATE"], bad["LABTASKER_STATE"]) == ("succeeded", "failed")
    assert (ok["LABTASKER_EXIT_CODE"], bad["LABTASKER_EXIT_CODE"]) == ("0", "1")
    assert ok["LABTASKER_HOST"] == host and ok["LABTASKER_NAME"] == "fin"
    assert json.loads(ok["LABTASKER_ARGS"]) == {"i": 1}
    assert float(ok["LABTASKER_RUNTIME"]) >= 0 and ok["LABTASKER_GPUS"] == ""
    assert ok["LABTASKER_COMMAND"].startswith("echo task 1 && mkdir -p out")
    # The log was copied before the task was final.
    assert Path(ok["LABTASKER_LOG"]).read_text() == "task 1\n"
    for task_id, i in zip(ids, (1, 2), strict=True):
        dest = lab.root / "queue.outputs" / str(task_id)
        names = {p.name for p in (dest / "out").iterdir()}  # the workdir is shared: r1 stays
        assert f"r{i}.json" in names and names <= {"r1.json", "r2.json"}, names
        assert json.loads((dest / "out" / f"r{i}.json").read_text()) == {"i": i}
        assert stat.S_IMODE((dest / "out" / f"r{i}.json").stat().st_mode) == 0o600
        assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert "outside the working directory" in stdout  # the link was refused, and said so


def test_local_host_runs_the_hook_and_copies_outputs(lab: Lab) -> None:
    workdir = lab.shared / "work-local"
    hosts, hook_log = setup(lab, "local", workdir)
    check_finish(lab, workdir, "local", hosts, hook_log)


def test_ssh_host_copies_outputs_over_sftp(lab: Lab) -> None:
    workdir = lab.shared / "work-cpu"
    hosts, hook_log = setup(lab, "cpu", workdir)
    check_finish(lab, workdir, "cpu", hosts, hook_log)


def test_status_watch_shows_gpu_use_eta_and_a_stopped_dispatcher(lab: Lab) -> None:
    hosts = lab.hosts_toml("gpu1")
    (quick,) = lab.add("--args", '{"p1": 0, "p2": "z", "p3": 0}', sleep=0.1)
    (long,) = lab.add("--args", '{"p1": 1, "p2": "a", "p3": 0}', sleep=60)
    (waits,) = lab.add("--args", '{"p1": 2, "p2": "b", "p3": 0}')
    proc = lab.start("dispatch", "--hosts", str(hosts))
    lab.wait_task(long, ["running"])
    store = Store(lab.db, lock_timeout=30)

    def watched() -> str | None:
        text = render(status_view(store, watch=True)[0])
        return text if f"task {long}" in text else None

    shown = str(wait(watched, "the watch view showing the task's GPU"))
    assert "gpu1" in shown and "1 running · 1 pending · 1 succeeded" in shown
    assert lab.task(quick)["state"] == "succeeded"
    assert re.search(r"ETA (<1|~\d+) min", shown), shown  # from the quick task's runtime
    lab.ok("queue", "cancel", str(long), str(waits))
    code, out, err = finish(proc)
    assert code == 0, (out, err)
    assert "No dispatcher is running" not in lab.ok("status")  # nothing active: nothing stale
    stale = render(status_view(store, watch=True)[0])
    assert "gpu1" not in stale and "ETA" not in stale  # no dispatcher: no GPU view, no ETA


def render(view: RenderableType) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(view)
    return console.export_text()
