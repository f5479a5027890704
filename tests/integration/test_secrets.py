"""A ``secret_env`` value reaches the task and is never shown or stored, on the controller or host.

The task proves the value arrived by writing its sha256 to its result; the value itself must not
appear in the queue file, the collected logs, or anything ``status``, ``queue ls``, ``results``,
``logs``, ``hosts check`` or ``dispatch`` print, including their error messages; nor in any file
under the host's state dir or workdir, any process's command line, or the ``on_finish`` hook's
environment. A ``secret_env`` name no ``env`` table sets comes from labtasker's own environment.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.integration.conftest import Lab, finish, wait
from tests.integration.test_cli_errors_config import one_error

# Proves the value arrived without printing it: its hash goes to the result, a marker to the log.
TASK = """import hashlib, json, os
value = os.environ["API_TOKEN"]
with open(os.environ["LABTASKER_RESULT"], "w") as f:
    json.dump({"sha256": hashlib.sha256(value.encode()).hexdigest(), "length": len(value)}, f)
print("hashed the token")
"""


@pytest.fixture
def token() -> str:
    return f"tok-{secrets.token_hex(16)}"


def secret_hosts(lab: Lab, token: str, *, setup: str | None = None) -> Path:
    """hosts.toml for ``cpu`` with API_TOKEN set from ``[defaults]`` and declared secret there."""
    text = lab.hosts_toml("cpu", cpu={"setup": setup} if setup else {}).read_text()
    text = text.replace(
        "[defaults]\n",
        f'[defaults]\nenv = {{ API_TOKEN = "{token}" }}\nsecret_env = ["API_TOKEN"]\n',
        1,
    )
    # Outside the controller directory, whose every file is searched for the token below.
    path = lab.shared / "hosts.toml"
    path.write_text(text)
    (lab.root / "hosts.toml").unlink()
    return path


def add_task(lab: Lab) -> int:
    script = lab.shared / "hash_token.py"
    script.write_text(TASK)
    script.chmod(0o644)
    out = lab.ok("queue", "add", "--json", "--cmd", f"python3 {script}")
    ids = json.loads(out)
    (task,) = ids["ids"] if isinstance(ids, dict) else ids
    return int(task)


def assert_nowhere(lab: Lab, token: str, shown: list[subprocess.CompletedProcess[str]]) -> None:
    """``token`` is in no command output and no file under the controller directory."""
    for done in shown:
        assert token not in done.stdout + done.stderr, (done.args, done.stdout, done.stderr)
    files = [p for p in lab.root.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".duckdb") for p in files), files
    assert any(".logs" in str(p) for p in files), files  # the collected log is searched too
    for path in files:
        assert token.encode() not in path.read_bytes(), path


def test_a_secret_reaches_the_task_and_nowhere_else(lab: Lab, token: str) -> None:
    hosts = secret_hosts(lab, token)
    task = add_task(lab)
    shown = [lab.run("dispatch", "--hosts", str(hosts))]
    assert shown[0].returncode == 0, (shown[0].stdout, shown[0].stderr)
    shown += [lab.run(*args.split()) for args in ("status", "queue ls", "queue ls --json")]
    shown += [lab.run("results", "--format", "json"), lab.run("logs", str(task))]
    shown += [lab.run("hosts", "check", "--hosts", str(hosts))]
    assert all(done.returncode == 0 for done in shown), [(d.args, d.stderr) for d in shown]
    (row,) = json.loads(shown[4].stdout)
    want = hashlib.sha256(token.encode()).hexdigest()
    assert (row["state"], row["result.sha256"], row["result.length"]) == (
        "succeeded",
        want,
        len(token),
    ), row
    assert "hashed the token" in shown[5].stdout
    assert_nowhere(lab, token, shown)
    # On the host, the run's directory (which held the launch spec) is gone after collection.
    state = lab.hosts.cpu.home / ".labtasker"
    left = [p for p in state.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert left == [], left


def test_a_failing_setup_line_does_not_show_the_secret(lab: Lab, token: str) -> None:
    # The setup line uses the secret and fails; its error names the line, never the value.
    hosts = secret_hosts(lab, token, setup='test "$API_TOKEN" = wrong')
    task = add_task(lab)
    shown = [lab.run("dispatch", "--hosts", str(hosts))]
    assert shown[0].returncode == 1, (shown[0].stdout, shown[0].stderr)
    row = lab.task(task)
    assert row["state"] == "failed", row
    shown += [lab.run("logs", str(task)), lab.run("queue", "ls"), lab.run("status")]
    assert 'setup failed (exit 1): test "$API_TOKEN" = wrong' in shown[1].stdout
    assert_nowhere(lab, token, shown)


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ("12345678901234567", "12345678901234567"),
        ('"with-nul-9f3a\\u0000"', "with-nul-9f3a"),
        ('["in-a-list-7c1e"]', "in-a-list-7c1e"),
        ('{ nested = "deep-4b2d" }', "deep-4b2d"),
    ],
)
def test_a_bad_secret_value_in_hosts_toml_is_not_echoed(lab: Lab, value: str, secret: str) -> None:
    hosts = lab.write_hosts(f"[hosts.cpu]\nenv = {{ API_TOKEN = {value} }}\n")
    lab.add_cmd("true")  # a queue to dispatch: without one, dispatch stops at "no queue here"
    for command in (["hosts", "check"], ["dispatch"]):
        done = lab.run(*command, "--hosts", str(hosts))
        line = one_error(done, f"{hosts}:2:", "API_TOKEN", "must be a string", code=2)
        assert secret not in line, line


def test_an_env_that_is_not_a_table_is_not_echoed(lab: Lab, token: str) -> None:
    hosts = lab.write_hosts(f'[hosts.cpu]\nenv = "API_TOKEN={token}"\n')
    line = one_error(lab.run("hosts", "check", "--hosts", str(hosts)), f"{hosts}:2:", code=2)
    assert "`env` must be a table" in line and token not in line, line


# Holds its run open until the test has searched the host: ready-<task id> says it has the token.
GATED = """import hashlib, json, os, sys, time
value = os.environ["API_TOKEN"]
with open(os.environ["LABTASKER_RESULT"], "w") as f:
    json.dump({"sha256": hashlib.sha256(value.encode()).hexdigest()}, f)
open("%s-%s" % (sys.argv[1], os.environ["LABTASKER_TASK_ID"]), "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def files_holding(token: str, *roots: Path) -> list[Path]:
    """Every file under ``roots`` (symlinks not followed) whose bytes hold ``token``."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except FileNotFoundError:  # removed while we looked (a run dir being reset)
                    continue
                if token.encode() in data:
                    found.append(path)
    return found


def command_lines_holding(token: str) -> list[str]:
    """Command lines of live processes (anyone on a host can read them) holding ``token``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in argv:
                found.append(argv.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


def cli(lab: Lab, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A labtasker command run with API_TOKEN exported, as from the user's shell."""
    env = lab.env() | {"API_TOKEN": token}
    argv = lab.argv(*args)
    return subprocess.run(argv, cwd=lab.root, env=env, capture_output=True, text=True, check=False)


def no_token_in(token: str, shown: Iterable[subprocess.CompletedProcess[str]]) -> None:
    for done in shown:
        assert done.returncode == 0, (done.args, done.stdout, done.stderr)
        assert token not in done.stdout + done.stderr, (done.args, done.stdout, done.stderr)


def test_a_secret_from_the_environment_touches_no_disk_and_reaches_only_the_task(
    lab: Lab, token: str
) -> None:
    hooks = lab.root / "hooks"
    hooks.mkdir()
    hosts = lab.hosts_toml("cpu")
    hosts.write_text(
        hosts.read_text().replace("[defaults]\n", '[defaults]\nsecret_env = ["API_TOKEN"]\n', 1)
        + f'[controller]\non_finish = "env > {hooks}/$LABTASKER_TASK_ID.env"\n'
    )
    script = lab.shared / "gated.py"
    script.write_text(GATED)
    ready, go = lab.shared / "ready", lab.shared / "go"
    cmd = f"python3 {script} {ready} {go}"
    # The second task's script is too long for one argument: the helper writes it to cmd.sh.
    long_cmd = f": {'x' * 70_000}; {cmd}"
    tasks = [lab.add_cmd(cmd)[0], lab.add_cmd(long_cmd)[0]]
    env = lab.env() | {"API_TOKEN": token}
    proc = subprocess.Popen(
        lab.argv("dispatch", "--hosts", str(hosts)),
        cwd=lab.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lab.started.append(proc)
    marks = [Path(f"{ready}-{t}") for t in tasks]
    wait(lambda: proc.poll() is not None or all(m.exists() for m in marks), "tasks have the token")
    assert all(m.exists() for m in marks), [lab.task(t) for t in tasks]
    # Both tasks run and have the value now: search while their run records are live.
    state = lab.hosts.cpu.home / ".labtasker"
    assert list(state.rglob("cmd.sh")), "the long script should be in a cmd.sh"
    assert files_holding(token, state, lab.shared, lab.root) == []
    assert command_lines_holding(token) == []
    go.touch()
    code, out, err = finish(proc)
    assert code == 0 and token not in out + err, (out, err)
    want = hashlib.sha256(token.encode()).hexdigest()
    assert [lab.task(t)["result"] for t in tasks] == [{"sha256": want}] * 2
    shown = [cli(lab, token, *a.split()) for a in ("status", "queue ls", "queue ls --json")]
    shown += [cli(lab, token, "logs", str(t)) for t in tasks]
    shown += [cli(lab, token, "results", "--format", "json")]
    shown += [cli(lab, token, "hosts", "check", "--hosts", str(hosts))]
    no_token_in(token, shown)
    hook_envs = [hooks / f"{t}.env" for t in tasks]
    wait(lambda: all(p.exists() and p.stat().st_size for p in hook_envs), "the hooks ran")
    assert all("LABTASKER_STATE=succeeded" in p.read_text() for p in hook_envs)
    assert files_holding(token, state, lab.shared, lab.root) == []


def test_a_secret_set_nowhere_is_one_error_naming_it(lab: Lab) -> None:
    hosts = lab.hosts_toml("cpu", cpu={"secret_env": ["API_TOKEN"]})
    lab.add_cmd("true")  # a queue to dispatch: without one, dispatch stops at "no queue here"
    for command in (["hosts", "check"], ["dispatch"]):
        done = lab.run(*command, "--hosts", str(hosts))
        one_error(
            done,
            f"{hosts}:",
            "host cpu: `secret_env` names API_TOKEN, which is set neither in `env` nor in the "
            "environment labtasker runs in; export API_TOKEN before running labtasker",
            code=2,
        )
