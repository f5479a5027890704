"""Every mistake in hosts.toml, through the real ``labtasker hosts check`` and ``dispatch``.

Each case must end with exactly one ``Error:`` line on stderr naming the file (and line), exit
status 2, no traceback, and a queue file left exactly as it was. The helpers here are shared by
the other ``test_cli_errors_*`` modules.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.integration.conftest import Lab

ONE = '{"p1": 1, "p2": "a", "p3": 0.5}'


def one_error(done: subprocess.CompletedProcess[str], *fragments: str, code: int = 0) -> str:
    """The single ``Error:`` line of a failed command; asserts the contract of docs/errors.md."""
    assert done.returncode != 0, (done.stdout, done.stderr)
    if code:
        assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """A failed ``dispatch``'s summary: every stderr line is ``Error: ...``; their texts."""
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("Error: ") for line in lines), done.stderr
    assert "Error: " not in done.stdout, done.stdout  # progress stays on stdout, problems not
    return [line.removeprefix("Error: ") for line in lines]


def queue_rows(lab: Lab) -> list[dict[str, Any]]:
    """The queue as ``queue ls --json`` shows it, without the fields a read may not change."""
    return lab.tasks()


@pytest.fixture
def queued(lab: Lab) -> list[dict[str, Any]]:
    """One pending task in the queue; the rows before the command under test."""
    lab.add("--args", ONE)
    return queue_rows(lab)


CASES = {
    "not-toml": ('[hosts.gpu1]\nslots = 2\nenv = { A = "x" \n', [":3:", "hosts.toml"]),
    "unknown-key": ("[hosts.gpu1]\nslots = 1\nslotz = 2\n", [":3:", "`slotz`", "`slots`"]),
    "wrong-type": ('[hosts.gpu1]\ngpus = "many"\n', [":2:", "host gpu1", "`gpus`"]),
    "duplicate-host": (
        "[hosts.gpu1]\nslots = 1\n\n[hosts.gpu1]\nslots = 2\n",
        [":4:", "duplicate host `gpu1`", "merge or rename one"],
    ),
    "no-hosts": ("[defaults]\nslots = 1\n", ["no hosts defined", "add a [hosts.NAME] table"]),
    "bad-ssh-target": ('[hosts.gpu1]\nssh = "a@b@c"\n', [":2:", "[USER@]HOST[:PORT]"]),
}


@pytest.mark.parametrize("command", ["hosts check", "dispatch"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_hosts_file_is_one_line_naming_file_and_line(
    lab: Lab, queued: list[dict[str, Any]], case: str, command: str
) -> None:
    text, fragments = CASES[case]
    path = lab.write_hosts(text)
    done = lab.run(*command.split(), "--hosts", str(path))
    line = one_error(done, str(path), *fragments, code=2)
    assert "\n" not in line
    assert queue_rows(lab) == queued


@pytest.mark.parametrize("command", ["hosts check", "dispatch"])
def test_a_missing_hosts_file_says_how_to_make_one(
    lab: Lab, queued: list[dict[str, Any]], command: str
) -> None:
    done = lab.run(*command.split())  # the default: ./hosts.toml, which does not exist
    one_error(done, "hosts file ./hosts.toml not found", "--hosts PATH", code=2)
    assert queue_rows(lab) == queued


def test_not_toml_gives_line_and_column(lab: Lab) -> None:
    path = lab.write_hosts("[hosts.gpu1]\nslots = = 2\n")
    line = one_error(lab.run("hosts", "check", "--hosts", str(path)), code=2)
    assert line.startswith(f"Error: {path}:2:9: ")


def test_a_hosts_file_that_is_not_utf8_names_the_line(lab: Lab) -> None:
    path = lab.root / "hosts.toml"
    path.write_bytes(b"[hosts.gpu1]\n# caf\xe9\n")
    one_error(lab.run("hosts", "check", "--hosts", str(path)), f"{path}:2: not UTF-8", code=2)
