"""Docs that run: every code block of README.md and docs/*.md is run here, in order, on the
``local`` host through the real CLI, or marked as not run with a reason (at most five in all).

How each block runs, and the markers a doc puts before a block, are in tests/docs_run.py's
docstring. One test per doc file, so a failure names the file and the block's line.
"""

from __future__ import annotations

import inspect
import re
import sys
import tomllib
from pathlib import Path

import pytest

from dispatcher import Queue
from dispatcher.config.hosts import load_hosts
from tests.docs_labtasker import localize
from tests.docs_run import (
    DOCS,
    NEVER_RUN,
    REPO,
    Block,
    Project,
    blocks,
    problem,
    run_block,
    shell_script,
    shown_output,
)

#: At most this many blocks in all the docs may be left unrun.
MAX_NOT_RUN = 5
#: What a doc's blocks need in the queue before they run, as labtasker commands (the docs run
#: them in the order they show them; results.md queries a finished sweep it does not make).
SETUP: dict[str, list[list[str]]] = {
    "docs/results.md": [
        ["queue", "add", "--grid", "size=small,large", "--grid", "lr=0.1,0.01", "--grid",
         "seed=1,2", "--gpus", "0", "--", "python", "train.py", "--lr", "%{lr}", "--seed",
         "%{seed}"],
        ["dispatch"],
    ],
}  # fmt: skip


def _all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_doc_runs(doc: Path, tmp_path: Path) -> None:
    """The doc's blocks, in order, in a fresh project: each one exits 0 / checks out."""
    project = Project(tmp_path)
    rel = doc.relative_to(REPO).as_posix()
    for argv in SETUP.get(rel, []):
        project.labtasker(Block(rel, 0, "setup", " ".join(argv)), *argv)
    found = blocks(doc)
    for block in found:
        assert problem(block) is None, problem(block)
        run_block(project, block)
    if rel == "README.md":  # the first line of the README: install, then the demo
        assert (project.dir / "labtasker-demo" / ".labtasker" / "queue.duckdb").is_file()


def test_every_block_follows_the_conventions() -> None:
    """No block without a language or a marker; every `not run` says why."""
    problems = [p for p in map(problem, _all_blocks()) if p]
    assert not problems, "\n".join(problems)


def test_at_most_five_blocks_are_not_run() -> None:
    skipped = [b for b in _all_blocks() if b.marker == "not run"]
    assert len(skipped) <= MAX_NOT_RUN, [f"{b.where}: {b.arg}" for b in skipped]
    assert all(b.arg.strip() for b in skipped)


def test_readme_opens_with_the_install_and_the_demo() -> None:
    """The first command of the README is the install and the demo; the docs run runs the demo
    (its `pip install .` is one of the never-run commands)."""
    first = blocks(REPO / "README.md")[0]
    assert first.lang == "bash" and first.marker is None
    assert first.text.startswith("pip install . && labtasker demo ")
    assert "python3 -m pytest -q" in first.text.splitlines()[1]
    assert len(NEVER_RUN) == 2


#: What a ``pip install`` in the docs may install: this checkout (``.``, ``-e '.[extra]'``) or a
#: git URL. labtasker is not on PyPI, and the name ``labtasker`` there is another project.
PIP_TARGET = re.compile(r"(?:-e )?(?:\.|'\.\[\w+\]'|git\+\S+)")


def test_every_pip_install_in_the_docs_installs_from_a_checkout_or_git() -> None:
    """The docs run never runs ``pip install`` (NEVER_RUN), so what each one installs is checked
    here: never a PyPI name, where ``labtasker-ssh`` is not published and ``labtasker`` is
    another project; the README and getting-started say so."""
    installs: list[str] = []
    for doc in DOCS:
        for block in blocks(doc):
            installs += re.findall(r"pip3? install ([^&;#`\n]*)", block.text)
    assert installs and "." in {i.strip() for i in installs}, installs
    for target in installs:
        assert PIP_TARGET.fullmatch(target.strip()), target
    for name in ("README.md", "docs/getting-started.md"):
        text = " ".join((REPO / name).read_text(encoding="utf-8").split())
        assert "not on PyPI" in text or "not published on PyPI" in text, name
        assert re.search(r"`pip install labtasker` installs a different", text), name
        assert "git+" in text, name


def test_doc_blocks_import_only_what_labtasker_installs() -> None:
    """The docs run in the suite's environment, which has the test tools too; a fresh install
    has only the standard library, labtasker and its dependencies (pyproject.toml), so those
    are all a block may import (pandas, say, is no dependency)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    allowed = {"dispatcher", *sys.stdlib_module_names}
    allowed |= {re.split(r"[<>=\[ ;]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    for block in _all_blocks():
        found = re.findall(r"(?:^|;|-c\s+[\"'])\s*(?:import|from)\s+(\w+)", block.text, re.M)
        for name in found:  # python blocks, and `python -c "import ..."` in shell blocks
            assert name in allowed, f"{block.doc}:{block.line}: imports {name}"


def _signature_text(method: object) -> str:
    """A signature as the docs write it: ``cmd, *, args=None, after=()``."""
    words = []
    star = False
    for p in list(inspect.signature(method).parameters.values()):  # type: ignore[arg-type]
        if p.name == "self":
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            words.append("*")
            star = True
        default = "" if p.default is inspect.Parameter.empty else f"={p.default!r}"
        words.append(f"{p.name}{default}")
    return ", ".join(words)


def test_results_md_api_table_lists_every_parameter() -> None:
    """Each `Queue(...)` / `q.METHOD(...)` row of results.md's API table shows exactly the
    parameters, defaults and keyword-only marker of the real signature."""
    text = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(Queue|q\.\w+)\((.*?)\)` \|", text, flags=re.M)
    documented = {name: params for name, params in rows}
    assert "q.add" in documented and "Queue" in documented, rows
    for name, params in documented.items():
        method = Queue.__init__ if name == "Queue" else getattr(Queue, name.removeprefix("q."))
        assert params == _signature_text(method), name


def test_a_failing_block_names_its_file_and_line(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "# x\n\n```bash\nlabtasker --version\n```\n\n```sh\nlabtasker queue retry 9\n```\n"
    )
    project = Project(tmp_path / "run")
    first, second = blocks(doc)
    run_block(project, first)
    with pytest.raises(AssertionError, match=r"^x\.md:7: bash exited [12]\n"):
        run_block(project, second)


def test_a_usage_block_with_an_unknown_option_fails(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("<!-- usage -->\n```\nlabtasker results [--format F] [--colour C]\n```\n")
    (block,) = blocks(doc)
    assert block.marker == "usage" and problem(block) is None
    with pytest.raises(AssertionError, match=r"x\.md:2: --colour is not an option"):
        run_block(Project(tmp_path / "run"), block)


def test_install_and_suite_commands_are_never_run() -> None:
    text = "pip install . && labtasker demo  # go\npython -m pip install -e '.[dev]'\n"
    text += "pip install -e '.[test]' && python3 -m pytest -q   # all\n"
    script = shell_script(Block("x.md", 1, "bash", text))
    assert "pip" not in script and "pytest" not in script, script
    assert script.splitlines()[0] == ": && labtasker demo  # go"


def test_every_host_of_a_doc_is_made_local(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(
        '[defaults]\nworkdir = "~/exp"\n[hosts.gpu-a]   # an alias\n'
        '[hosts.cpu-box]\nssh = "alice@cpu-box:2200"\ngpus = 0\n[hosts.local]\nslots = 2\n'
    )
    hosts.write_text(localize(hosts.read_text()))
    assert localize(hosts.read_text()) == hosts.read_text()  # idempotent
    config = load_hosts(hosts)
    assert [h.name for h in config.hosts] == ["gpu-a", "cpu-box", "local"]
    assert all(h.local and h.ssh is None for h in config.hosts)
    assert config.hosts[1].gpus == () and config.hosts[2].slots == 2


def test_the_output_a_block_shows_is_checked(tmp_path: Path) -> None:
    """`# ...` lines are output the block must print; a here-document's `#` lines are not."""
    doc = tmp_path / "x.md"
    ok = "```bash\ncat > notes.txt <<'EOF'\n# a heading\nEOF\n"
    ok += "echo 'Added  6 tasks'\n# Added 6 tasks\n```\n"
    doc.write_text(ok + "\n```sh\necho 'Added 5 tasks'\n# Added 6 tasks\n```\n")
    project = Project(tmp_path / "run")
    good, bad = blocks(doc)
    assert shown_output(good) == [" Added 6 tasks"]
    run_block(project, good)
    with pytest.raises(AssertionError, match=r"x\.md:9: the doc shows 'Added 6 tasks'"):
        run_block(project, bad)
