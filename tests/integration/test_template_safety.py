"""Templates cannot be turned into code, through the real CLI, sweep files, the Python API and
``dispatch`` on the ``local`` host.

A placeholder inside quotes gets its value written for those quotes (it used to be quoted a
second time, which unquoted it); a placeholder where no quoting is safe is refused at ``queue
add`` and ``queue update --cmd`` with one line of advice; a refused template already in a queue
file fails its tasks at dispatch, which never launches them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import pytest

from dispatcher.api import Queue
from dispatcher.errors import UnsafeTemplateError
from tests.integration.conftest import Lab
from tests.integration.test_cli_errors_config import one_error

UNSAFE = 'echo "$(cat %{x})"'
ADVICE = 'X=%{x}; echo "$(cat "$X")"'


def local_hosts(lab: Lab) -> Path:
    return lab.write_hosts(f'[hosts.local]\nworkdir = "{lab.root}"\nslots = 4\n')


def log_of(lab: Lab, task_id: int) -> str:
    return lab.ok("logs", str(task_id))


def test_the_two_reported_injections_run_nothing_and_print_the_value(lab: Lab) -> None:
    pwned, pwned2 = lab.root / "pwned", lab.root / "pwned2"
    first = f"a; echo INJECTED > {pwned}"
    second = f"$(touch {pwned2})"
    (a,) = lab.add_cmd("echo '%{x}'", "--args", json.dumps({"x": first}))
    (b,) = lab.add_cmd('echo "%{x}"', "--args", json.dumps({"x": second}))
    done = lab.run("dispatch", "--hosts", str(local_hosts(lab)))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert [t["state"] for t in lab.tasks()] == ["succeeded", "succeeded"]
    assert not pwned.exists() and not pwned2.exists()
    assert log_of(lab, a).strip() == first
    assert log_of(lab, b).strip() == second


def test_name_in_single_quotes_gets_exactly_the_value(lab: Lab) -> None:
    script = lab.root / "argv.py"
    script.write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    name = 'it\'s "me" $(id) `id` \\ ; #'
    lab.add_cmd(f"{sys.executable} {script} --name '%{{n}}' \"run-%{{n}}\" out_%{{i}}.json",
                "--args", json.dumps({"n": name, "i": 3}))  # fmt: skip
    done = lab.run("dispatch", "--hosts", str(local_hosts(lab)))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert json.loads(log_of(lab, 1)) == ["--name", name, f"run-{name}", "out_3.json"]


@pytest.mark.parametrize(
    ("template", "where"),
    [
        (UNSAFE, "inside $(...)"),
        ("echo `cat %{x}`", "inside backticks"),
        ("echo ${X:-%{x}}", "inside ${...}"),
        ("echo $((%{x} + 1))", "inside arithmetic"),
        ("cat <<EOF\n%{x}\nEOF", "inside a here-document"),
        ("echo hi # %{x}", "inside a comment"),
    ],
)
def test_queue_add_refuses_a_placeholder_where_quoting_cannot_help(
    lab: Lab, template: str, where: str
) -> None:
    done = lab.run("queue", "add", "--cmd", template, "--args", '{"x": 1}')
    line = one_error(done, "unsafe template: %{x}", where, code=2)
    assert "X=%{x}" in line or "do the arithmetic" in line or "move it before the #" in line
    assert lab.tasks() == []


def test_queue_update_refuses_an_unsafe_command_and_keeps_the_old_one(lab: Lab) -> None:
    (tid,) = lab.add_cmd("echo %{x}", "--args", '{"x": 1}')
    done = lab.run("queue", "update", str(tid), "--cmd", UNSAFE)
    one_error(done, "unsafe template: %{x}", "inside $(...)", ADVICE, code=2)
    assert lab.task(tid)["command"] == "echo 1"


def test_a_sweep_file_with_an_unsafe_command_is_refused(lab: Lab) -> None:
    sweep = lab.root / "sweep.toml"
    sweep.write_text(f"command = {json.dumps(UNSAFE)}\n[grid]\nx = [1, 2]\n")
    done = lab.run("queue", "add", "--file", str(sweep))
    one_error(done, "unsafe template: %{x}", "inside $(...)", ADVICE, code=2)
    assert lab.tasks() == []


def test_the_python_api_refuses_an_unsafe_command(lab: Lab) -> None:
    q = Queue(lab.db)
    with pytest.raises(UnsafeTemplateError, match=r"inside \$\(\.\.\.\)"):
        q.add(UNSAFE, args=[{"x": 1}])
    assert not q.path.exists()  # refused before anything was created
    assert q.add("echo '%{x}'", args=[{"x": "a'b"}]) == [1]
    assert q.tasks()[0]["command"] == "echo 'a'\\''b'"


def _store_raw(lab: Lab, task_id: int, template: str, command: str) -> None:
    """Write a template and command straight into the queue file, as an older labtasker did."""
    con = duckdb.connect(str(lab.db))
    try:
        con.execute(
            "UPDATE tasks SET template = ?, command = ? WHERE id = ?", [template, command, task_id]
        )
    finally:
        con.close()


def test_a_stored_template_now_refused_fails_at_dispatch_and_never_runs(lab: Lab) -> None:
    canary = lab.root / "ran"
    (bad,) = lab.add_cmd("echo %{x}", "--args", json.dumps({"x": str(canary)}))
    (good,) = lab.add_cmd("echo fine")
    _store_raw(lab, bad, "touch $(echo %{x})", f"touch $(echo {canary})")
    hosts = local_hosts(lab)
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    assert f"task {bad} failed (unsafe template: %{{x}}" in done.stdout + done.stderr
    row = lab.task(bad)
    assert row["state"] == "failed" and row["attempt"] == 0 and row["host"] is None, row
    assert row["reason"].startswith("unsafe template: %{x} in ")
    assert "inside $(...)" in row["reason"] and ADVICE in row["reason"]
    assert not canary.exists()
    assert lab.task(good)["state"] == "succeeded"
    # The fix docs/errors.md gives: retry, write the command as advised, dispatch again.
    lab.ok("queue", "retry", str(bad))
    lab.ok("queue", "update", str(bad), "--cmd", 'X=%{x}; touch "$(echo "$X")"')
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert lab.task(bad)["state"] == "succeeded" and canary.exists()


def test_a_command_rendered_by_older_quoting_is_rendered_again_before_it_runs(lab: Lab) -> None:
    canary = lab.root / "pwned"
    value = f"a; echo INJECTED > {canary}"
    (tid,) = lab.add_cmd("echo '%{x}'", "--args", json.dumps({"x": value}))
    # What the old renderer stored: the value quoted again inside the template's quotes.
    _store_raw(lab, tid, "echo '%{x}'", f"echo ''{value}''")
    done = lab.run("dispatch", "--hosts", str(local_hosts(lab)))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert not canary.exists()
    assert log_of(lab, tid).strip() == value
    assert lab.task(tid)["command"] == f"echo '{value}'"
