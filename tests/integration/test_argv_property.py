"""Arbitrary argument words, env values and workdirs reach a remote task exactly as meant.

Through real sshd: the task program dumps ``sys.argv``, its ``LT_*`` environment and its working
directory as JSON to its result, and the test compares them with what was asked for. Most
examples drive labtasker's helper directly over one reused connection (command rendered by the
real template code, the launch spec the dispatcher sends); one example goes through ``queue add``
and ``dispatch``. A NUL in an argument is refused at ``queue add`` time.

Generated templates (``tests/template_cases.py``) put placeholders in every context the shell
allows (bare, '...', "...", inside longer words) with arbitrary values; on ``local`` and over
sshd each runs through the helper (``bash -c``, or exec without a shell for plain words) and
through ``bash -c`` and ``dash -c`` started on that host; the program gets exactly the values and
a canary file that any value turned into code would create never appears.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dispatcher.core.template import escape_literal, render
from dispatcher.remote import protocol
from dispatcher.remote.client import HelperClient
from dispatcher.remote.helper import plain_words
from dispatcher.transport.transports import LocalTransport, SSHOptions, SSHTransport
from tests.integration.conftest import Lab
from tests.integration.test_cli_errors_config import one_error
from tests.sshd import SshdHosts
from tests.template_cases import Case, cases

pytestmark = pytest.mark.sshd

DUMP = """import json, os, sys
with open(os.environ["LABTASKER_RESULT"], "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(),
               "env": {k: v for k, v in os.environ.items() if k.startswith("LT_")}}, f)
"""

#: Any character a command-line word or environment value can hold: everything but NUL (and
#: lone surrogates, which are not text).
CHARS = st.characters(blacklist_categories=["Cs"], blacklist_characters="\0")
TRICKY = ["'", '"', "$(id)", "`id`", "\n", " ", "%", "%{x}", "%%", "\\", "*", "~", "$HOME", ";"]
WORDS = st.lists(
    st.one_of(st.text(CHARS, max_size=12), st.sampled_from(TRICKY)).map(str), max_size=6
)
# Prefixed: a generated name must not be PATH, LD_PRELOAD or BASH_ENV, which change the run.
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).map(lambda n: f"LT_{n}")
ENVS = st.dictionaries(NAMES, st.one_of(st.text(CHARS, max_size=16), st.sampled_from(TRICKY)))
DIR_NAMES = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\0/"), min_size=1, max_size=12
)


def command_for(script: Path, words: list[str]) -> tuple[str, dict[str, Any]]:
    """A template passing each word as one placeholder, rendered the way ``queue add`` does."""
    args = {f"w{i}": w for i, w in enumerate(words)}
    template = " ".join([f"python3 {script}", *(f"%{{{k}}}" for k in args)])
    return render(template, args), args


@dataclass
class Remote:
    """One connection to a host and one helper on it, driven from a private event loop."""

    runner: asyncio.Runner
    transport: SSHTransport | LocalTransport
    client: HelperClient
    script: Path
    home: Path

    def launch(self, command: str, env: dict[str, str], workdir: str) -> dict[str, Any]:
        """Run ``command`` to its end; the run's exit report."""
        run_id = f"prop-{uuid.uuid4().hex[:12]}"
        spec = {"command": command, "env": env, "workdir": workdir, "task_id": 1}

        async def go() -> dict[str, Any]:
            await self.client.call("launch", run_id=run_id, spec=spec)
            while True:
                event = await asyncio.wait_for(self.client.events.get(), 30)
                if event.get("event") == "exit" and event["run"]["run_id"] == run_id:
                    await self.client.call("cleanup", runs=[run_id])
                    run: dict[str, Any] = event["run"]
                    return run

        return self.runner.run(go())

    def shell(self, shell: str, command: str) -> tuple[int | None, bytes, str]:
        """``shell -c command`` started on the host: (exit status, stdout, stderr)."""

        async def go() -> tuple[int | None, bytes, str]:
            proc = await self.transport.start([shell, "-c", command])
            proc.stdin.write_eof()
            out = b""
            while chunk := await asyncio.wait_for(proc.stdout.read(65536), 30):
                out += chunk
            return await asyncio.wait_for(proc.wait(), 30), out, await proc.stderr_text()

        return self.runner.run(go())


@pytest.fixture
def remote(ssh_home: Path, sshd_hosts: SshdHosts) -> Iterator[Remote]:
    yield from _remote("gpu2", ssh_home, sshd_hosts)


@pytest.fixture(params=["local", "gpu2"])
def host(request: pytest.FixtureRequest, ssh_home: Path, sshd_hosts: SshdHosts) -> Iterator[Remote]:
    """A helper on ``local`` (this machine, no ssh) or on gpu2 over real sshd."""
    yield from _remote(request.param, ssh_home, sshd_hosts)


def _remote(name: str, ssh_home: Path, sshd_hosts: SshdHosts) -> Iterator[Remote]:
    shared = Path(tempfile.mkdtemp(prefix="argv-", dir=sshd_hosts.base))
    shared.chmod(0o777)  # the canary must be creatable by the host's user, were a value run
    script = shared / "dump.py"
    script.write_text(DUMP)
    script.chmod(0o644)
    state = f"~/.labtasker-prop-{uuid.uuid4().hex[:8]}"
    runner = asyncio.Runner()
    transport: SSHTransport | LocalTransport
    if name == "local":
        transport, home = LocalTransport(), ssh_home
    else:
        transport, home = SSHTransport(name, options=SSHOptions()), sshd_hosts.gpu2.home

    async def start() -> HelperClient:
        await asyncio.wait_for(transport.connect(), 20)
        proc = await transport.start(protocol.bootstrap_argv("python3", state))
        client = HelperClient("gpu2", proc.stdout, proc.stdin)
        await client.start(timeout=20, stderr_text=proc.stderr_text)
        return client

    try:
        client = runner.run(start())
        yield Remote(runner, transport, client, script, home)
        runner.run(client.close())
    finally:
        runner.run(transport.close())
        runner.close()
        shutil.rmtree(shared, ignore_errors=True)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(words=WORDS, env=ENVS, leaf=DIR_NAMES)
def test_words_env_and_workdir_arrive_exactly(
    remote: Remote, words: list[str], env: dict[str, str], leaf: str
) -> None:
    command, _ = command_for(remote.script, words)
    # Relative to the remote home (as ssh does); a leading "~x" would name another user's home.
    workdir = f"lt prop 'q\" {uuid.uuid4().hex[:6]}/{leaf if leaf not in ('.', '..') else 'x'}"
    run = remote.launch(command, env, workdir)
    assert run["exit_code"] == 0 and run["error"] is None, run
    result = run["result"]
    assert result["argv"] == words
    assert result["env"] == env
    assert result["cwd"] == str(remote.home / workdir)
    shutil.rmtree(remote.home / workdir.split("/")[0], ignore_errors=True)


PRINTF = "printf 'W%%s\\0'"  # the shells' own printf: one NUL-ended word per argument


def check_case(host: Remote, case: Case) -> None:
    """``case`` through the helper, ``bash -c`` and ``dash -c`` on ``host``: exact argv, and
    no canary file."""
    canary = host.script.parent / f"canary-{uuid.uuid4().hex[:8]}"
    case = case.with_canary(str(canary))
    program = escape_literal(f"python3 {host.script}")
    run = host.launch(render(f"{program} {case.words}", case.args), {}, str(host.script.parent))
    assert run["exit_code"] == 0 and run["error"] is None, (case, run)
    assert run["result"]["argv"] == case.expected, case
    command = render(f"{PRINTF} {case.words}", case.args)
    for shell in ("bash", "dash"):
        code, out, err = host.shell(shell, command)
        assert code == 0 and err == "", (shell, command, err)
        words = out.decode("utf-8").split("\0")
        assert words[-1] == "" and [w[1:] for w in words[:-1]] == case.expected, (shell, command)
    assert not canary.exists()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
@example(case=Case("'%{x}'", {"x": "a; echo INJECTED > @CANARY@"}, ["a; echo INJECTED > @CANARY@"]))
@example(case=Case('"%{x}"', {"x": "$(touch @CANARY@)"}, ["$(touch @CANARY@)"]))
def test_templates_in_every_context_pass_exact_values(host: Remote, case: Case) -> None:
    check_case(host, case)


def test_plain_words_run_without_a_shell_and_arrive_the_same(host: Remote) -> None:
    case = Case("%{a} --lr=%{b} out_%{c}.json -%{d}", {"a": "x", "b": 0.01, "c": 3, "d": "-v"},
                ["x", "--lr=0.01", "out_3.json", "--v"])  # fmt: skip
    command = render(f"python3 {host.script} {case.words}", case.args)
    assert plain_words(command, None, {}) is not None  # the helper's direct-exec path
    check_case(host, case)


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (control characters escaped as TOML requires)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def test_one_full_dispatch_passes_words_env_and_workdir(lab: Lab) -> None:
    script = lab.shared / "dump.py"
    script.write_text(DUMP)
    script.chmod(0o644)
    words = ["it's", 'say "hi"', "$(touch pwned)", "`id`", "two\nlines", " ", "100%", "%{w0}", ""]
    words += ["ünï €ø 😀", "a\\b", "*", "~", "$HOME", "; exit 3"]
    env = {"LT_QUOTE": 'it\'s "x" $(id) `id`', "LT_NL": "a\nb", "LT_EMPTY": "", "LT_U": "😀 ü"}
    workdir = lab.shared / "work dir 'q' \"dq\" $(x)"
    table = ", ".join(f"{k} = {toml_string(v)}" for k, v in env.items())
    hosts = lab.write_hosts(
        f"[hosts.gpu2]\nworkdir = {toml_string(str(workdir))}\nenv = {{ {table} }}\ngpus = 0\n"
    )
    args = {f"w{i}": w for i, w in enumerate(words)}
    template = " ".join([f"python3 {script}", *(f"%{{{k}}}" for k in args)])
    lab.ok("queue", "add", "--cmd", template, "--args", json.dumps(args))
    done = lab.run("dispatch", "--hosts", str(hosts))
    assert done.returncode == 0, (done.stdout, done.stderr)
    (row,) = lab.tasks()
    assert row["state"] == "succeeded", row
    assert row["result"] == {"argv": words, "env": env, "cwd": str(workdir)}, row
    assert not (workdir / "pwned").exists()


def test_a_nul_in_an_argument_is_refused_at_queue_add(lab: Lab) -> None:
    before = lab.tasks()
    done = lab.run("queue", "add", "--cmd", "echo %{x}", "--args", '{"x": "a\\u0000b"}')
    one_error(done, "NUL", code=2)
    assert lab.tasks() == before
