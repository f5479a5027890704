"""Runs the code blocks of a markdown file, in order, as a new user would type them.

The conventions a doc follows (tests/integration/test_docs_run.py enforces them):

- A fenced block's language says how it runs:
  ``bash``/``sh``/``shell``: a bash -e -o pipefail script in the project directory; a line that
  starts with ``#`` (``# Added 6 tasks (ids 1-6).``; not in a here-document) shows output: the
  block's stdout and stderr must hold that text (runs of blanks compared as one space);
  ``console``: the same, for the lines that start with ``$ `` (the rest is output);
  ``python``: this interpreter, ``-c``, in the project directory;
  ``sql``: ``labtasker sql "<block>"``;
  ``toml``: a hosts file (it has ``[hosts.*]``, ``[defaults]`` or ``[controller]``) is loaded as
  ``dispatch`` would load it (a fragment with no host gets ``[hosts.local]`` added); any other
  toml is a sweep file, previewed with ``labtasker queue add --file F --dry-run`` (``--cmd true``
  when it has no ``command``);
  ``ssh-config``: each ``Host`` alias is resolved as labtasker resolves it (asyncssh), and must
  reach the block's own HostName, User and ProxyJump.
- An HTML comment on the line just before the opening fence changes that:
  ``<!-- file: PATH -->`` writes the block to PATH (project-relative, ``~/`` is HOME) instead;
  ``<!-- output -->`` marks an output sample or a listing: checked by nothing, counted nowhere;
  ``<!-- usage -->`` marks a synopsis ``labtasker CMD [--opt ...]``: every ``--opt`` it shows must
  appear in ``labtasker CMD --help``;
  ``<!-- not run: REASON -->`` skips the block; the reason is required, and all the docs together
  hold at most five such blocks.
  A block with no language and no marker, or a language not listed here, is an error.
- Two commands are never run, wherever they appear: ``pip install ...`` (also as ``python -m pip``;
  the suite runs where labtasker is installed already) and ``python3 -m pytest ...`` (that is this
  suite). Each is replaced by ``:`` up to its ``&&``, ``;`` or comment, so
  ``pip install . && labtasker demo`` runs ``labtasker demo``.

Each doc runs in a fresh project directory with HOME in a fresh temp dir holding what a user
would have there (see ``Project.__init__``): ``labtasker`` is the real CLI through
tests/docs_labtasker.py (every host made local), ``python`` is this interpreter, and
``nvidia-smi`` is the test stub with two idle GPUs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
LANGS = SHELLS | {"python", "sql", "toml", "ssh-config"}
MARKERS = {"file", "output", "usage", "not run"}
#: Generous: passing blocks take seconds; a block that hangs fails with its output.
BLOCK_TIMEOUT = 120.0
#: Commands replaced by ``:``, and why.
NEVER_RUN = {
    r"(?:python3? -m )?pip3? install\b[^&;#\n]*": "the suite runs where labtasker is installed",
    r"python3? -m pytest\b[^&;#\n]*": "that is this test suite",
}
_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*([a-z ]+?)\s*(?::\s*(.*?))?\s*-->\s*$")
_GPUS = "".join(f"{i}, GPU-000{i}-docs, NVIDIA Test GPU, 0, 40960, 0\n" for i in (0, 1))


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts (1-based line of the fence), its language and marker."""

    doc: str
    line: int
    lang: str
    text: str
    marker: str | None = None
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, each with the marker comment just before it."""
    doc = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence[1]), None)
        assert end is not None, f"{doc}:{i + 1}: a code block is never closed"
        marker = _MARKER.match(lines[i - 1]) if i > 0 else None
        kind, arg = (marker[1], marker[2] or "") if marker else (None, "")
        text = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(doc, i + 1, fence[2].lower(), text, kind, arg))
        i = end + 1
    return found


def problem(block: Block) -> str | None:
    """Why a block breaks the conventions, or None."""
    if block.marker is not None and block.marker not in MARKERS:
        return f"{block.where}: unknown marker <!-- {block.marker} -->; use {sorted(MARKERS)}"
    if block.marker == "not run" and not block.arg:
        return f"{block.where}: <!-- not run --> needs a reason: <!-- not run: REASON -->"
    if block.marker == "file" and not block.arg:
        return f"{block.where}: <!-- file --> needs a path: <!-- file: PATH -->"
    if block.marker is None and block.lang not in LANGS:
        what = f"language {block.lang!r}" if block.lang else "no language"
        return f"{block.where}: a block with {what}: give it one of {sorted(LANGS)} or a marker"
    return None


def shell_script(block: Block) -> str:
    """The block as bash runs it: console prompts stripped, NEVER_RUN commands replaced."""
    text = block.text
    if block.lang == "console":
        text = "".join(ln[2:] + "\n" for ln in text.splitlines() if ln.startswith("$ "))
    for pattern in NEVER_RUN:
        text = re.sub(rf"(?m)(^|&&|;)(\s*){pattern}", r"\1\2: ", text)
    return text


class Project:
    """A fresh project directory and HOME, with what a new user would have made by then."""

    def __init__(self, root: Path) -> None:
        self.home, self.dir, self.bin = root / "home", root / "project", root / "bin"
        for d in (self.home / "exp", self.home / "venv" / "bin", self.dir, self.bin):
            d.mkdir(parents=True)
        (self.home / "venv" / "bin" / "activate").write_text("# a virtualenv's activate\n")
        train = REPO / "examples" / "train.py"  # the user's script, copied to where tasks run
        for where in (self.dir, self.home, self.home / "exp"):
            shutil.copy(train, where / "train.py")
        (self.dir / "hosts.toml").write_text("[hosts.local]\ngpus = 0\nslots = 4\n")
        py, wrapper = shlex.quote(sys.executable), REPO / "tests" / "docs_labtasker.py"
        scripts = {
            "labtasker": f'exec {py} {shlex.quote(str(wrapper))} "$@"',
            "python": f'exec {py} "$@"',
            "python3": f'exec {py} "$@"',
        }
        for name, line in scripts.items():
            (self.bin / name).write_text(f"#!/bin/sh\n{line}\n")
            (self.bin / name).chmod(0o755)
        shutil.copy(REPO / "tests" / "fake_bin" / "nvidia-smi", self.bin / "nvidia-smi")
        (self.bin / "gpus.csv").write_text(_GPUS)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
        pythonpath = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.update(HOME=str(self.home), PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}")
        env.update(PYTHONPATH=pythonpath, SHELL="/bin/bash", COLUMNS="200")
        env.update(LABTASKER_LOCK_TIMEOUT="30")
        return env

    def run(self, argv: list[str], block: Block, what: str) -> str:
        """Run ``argv`` in the project; fail naming the block unless it exits 0; its output."""
        try:
            done = subprocess.run(
                argv, cwd=self.dir, env=self.env(), capture_output=True, text=True,
                timeout=BLOCK_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            late = f"{block.where}: {what} still running after {exc.timeout} s"
            raise AssertionError(late) from None
        if done.returncode != 0:
            raise AssertionError(
                f"{block.where}: {what} exited {done.returncode}\n--- block ---\n{block.text}"
                f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
            )
        return done.stdout + done.stderr

    def labtasker(self, block: Block, *args: str) -> str:
        return self.run([str(self.bin / "labtasker"), *args], block, f"labtasker {args[0]}")

    def path(self, name: str) -> Path:
        return self.home / name[2:] if name.startswith("~/") else self.dir / name


def run_block(project: Project, block: Block) -> None:
    """Run one block as its language and marker say (see the module docstring)."""
    if block.marker in ("output", "not run"):
        return
    if block.marker == "file":
        target = project.path(block.arg)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.text, encoding="utf-8")
    elif block.marker == "usage":
        check_usage(project, block)
    elif block.lang in SHELLS:
        script = shell_script(block)
        out = project.run(["bash", "-e", "-o", "pipefail", "-c", script], block, "bash")
        check_output(block, out)
    elif block.lang == "python":
        project.run([sys.executable, "-c", block.text], block, "python")
    elif block.lang == "sql":
        project.labtasker(block, "sql", block.text)
    elif block.lang == "toml":
        check_toml(project, block)
    elif block.lang == "ssh-config":
        check_ssh_config(project, block)


def shown_output(block: Block) -> list[str]:
    """The output a shell block shows: its lines that start with ``#`` (outside here-documents),
    or, in a ``console`` block, its lines that are not ``$ `` commands."""
    if block.lang == "console":
        return [ln for ln in block.text.splitlines() if ln.strip() and not ln.startswith("$ ")]
    shown, heredoc = [], None
    for line in block.text.splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
        elif line.startswith("#"):
            shown.append(line[1:])
        elif opened := re.search(r"<<-?\s*['\"]?(\w+)", line):
            heredoc = opened[1]
    return shown


def check_output(block: Block, out: str) -> None:
    """Each line of output a shell block shows is text its commands printed."""
    said = " ".join(out.split())
    for line in shown_output(block):
        shown = " ".join(line.split())
        assert shown in said, f"{block.where}: the doc shows {shown!r}; it printed:\n{out}"


def check_usage(project: Project, block: Block) -> None:
    """Every option a synopsis shows is in the command's --help."""
    words = block.text.split()
    command = [w for w in words[1:3] if re.fullmatch(r"[a-z-]+", w)]
    assert words[0] == "labtasker", f"{block.where}: a usage block starts with `labtasker`"
    helptext = project.labtasker(block, *command, "--help")
    for option in sorted(set(re.findall(r"--[a-z][a-z-]*", block.text))):
        assert option in helptext, f"{block.where}: {option} is not an option of {command}"


def check_toml(project: Project, block: Block) -> None:
    """A hosts file loads as dispatch loads it; a sweep file previews with --dry-run."""
    from dispatcher.config.hosts import load_hosts

    doc = tomllib.loads(block.text)
    path = project.dir.parent / f"block-{block.line}.toml"
    if {"hosts", "defaults", "controller"} & set(doc):
        extra = "" if "hosts" in doc else "\n[hosts.local]\n"
        path.write_text(block.text + extra, encoding="utf-8")
        load_hosts(path)
        return
    path.write_text(block.text, encoding="utf-8")
    cmd = [] if "command" in doc else ["--cmd", "true"]
    project.labtasker(block, "queue", "add", "--file", str(path), "--dry-run", *cmd)


def check_ssh_config(project: Project, block: Block) -> None:
    """Each alias resolves, through the config as asyncssh reads it, to the block's own values."""
    import asyncssh

    path = project.dir.parent / f"block-{block.line}.ssh-config"
    path.write_text(block.text, encoding="utf-8")
    hosts: dict[str, dict[str, str]] = {}
    for line in block.text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "Host":
            current = hosts.setdefault(value.strip(), {})
        elif key and not key.startswith("#"):
            current[key] = value.strip()

    async def resolve(alias: str) -> Any:
        return await asyncssh.SSHClientConnectionOptions.construct(
            host=alias, config=[str(path)], port=(), username=(), client_keys=[]
        )

    assert hosts, f"{block.where}: no Host in this ssh config"
    for alias, keys in hosts.items():
        opts = asyncio.run(resolve(alias))
        got = {"HostName": opts.host, "User": opts.username, "ProxyJump": opts.tunnel}
        for key in ("HostName", "User", "ProxyJump"):
            assert keys.get(key) in (None, got[key]), f"{block.where}: {alias} {key}: {got[key]}"
