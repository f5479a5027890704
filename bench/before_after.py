"""Compare two versions of labtasker on the same machine, in the same run.

    python3 bench/before_after.py REV                     # REV against this checkout
    python3 bench/before_after.py REV --only throughput   # some benchmarks (default: throughput,
                                                          # latency, scale)

REV is checked out into a temporary git worktree; each benchmark runs there and here in turn
(``bench/run.py --only NAME --output FILE`` of each tree, which measures that tree's own code),
and the medians of rows found in both are printed as one markdown table with their ratio. It
changes nothing in either tree's docs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = ("throughput", "latency", "scale")
_ROW = re.compile(r"^\| ([^|]+?) \| ([^|]+?) \|")
_NUMBER = re.compile(r"([0-9.]+)\s*(\S*)")


def medians(markdown: str) -> dict[str, str]:
    """measurement -> median cell of the benchmark tables of a bench/run.py document (those
    headed ``| measurement | median |``; the hand-written analysis below them is left out)."""
    found, in_table = {}, False
    for line in markdown.splitlines():
        if line.startswith("| measurement | median |"):
            in_table = True
            continue
        m = _ROW.match(line) if in_table else None
        if m is None:
            in_table = False
        elif not m[1].startswith("-"):
            found[m[1].strip()] = m[2].strip()
    return found


def ratio(before: str, after: str) -> str:
    a, b = _NUMBER.match(before), _NUMBER.match(after)
    if not (a and b) or a[2] != b[2] or float(a[1]) == 0:
        return ""
    return f"{float(b[1]) / float(a[1]):.2f}"


def run(tree: Path, name: str, out: Path) -> str:
    argv = [sys.executable, str(tree / "bench" / "run.py"), "--only", name, "--output", str(out)]
    subprocess.run(argv, cwd=tree, check=True)
    return out.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the version to compare this checkout with")
    parser.add_argument("--only", nargs="+", default=list(DEFAULT))
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labtasker-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before), opts.rev],
                       cwd=REPO, check=True)  # fmt: skip
        try:
            rows = [
                "| measurement | before | after | after / before |",
                "| --- | --- | --- | --- |",
            ]
            for name in opts.only:
                old = medians(run(before, name, Path(tmp) / f"{name}-before.md"))
                new = medians(run(REPO, name, Path(tmp) / f"{name}-after.md"))
                for key in [k for k in new if k in old]:
                    rows.append(f"| {name}: {key} | {old[key]} | {new[key]} | "
                                f"{ratio(old[key], new[key])} |")  # fmt: skip
            print("\n".join(rows))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO,
                           check=False)  # fmt: skip


if __name__ == "__main__":
    main()
