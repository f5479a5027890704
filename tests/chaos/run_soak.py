"""Run the soak for some seeds and print one summary per seed, then a table of them all.

    python tests/chaos/run_soak.py 1 2 3          # the full soak (2,000 tasks, 100 faults)
    python tests/chaos/run_soak.py --short 7      # the suite's short soak, seed 7

Each seed runs ``tests/chaos/test_soak.py`` in its own pytest process against this checkout's
code (PYTHONPATH is set to it), as root for the sshd hosts' users. Exit status: 0 when every
seed passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run(seed: int, full: bool, report: Path) -> int:
    """One soak in a pytest process; its exit status. The summary lands in ``report``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LABTASKER_SOAK": "full" if full else "short",
        "LABTASKER_SOAK_SEED": str(seed),
        "LABTASKER_SOAK_REPORT": str(report),
    }
    argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"]
    argv.append("tests/chaos/test_soak.py")
    return subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode


def row(summary: dict[str, Any]) -> str:
    delays = summary["lost_delay_s"]
    spread = f"{delays['median']:.2f} / {delays['max']:.2f}" if delays["count"] else "none lost"
    faults = " ".join(f"{k}={n}" for k, n in summary["faults"].items())
    return (
        f"| {summary['seed']} | {summary['tasks']} | {faults} | {summary['lost']} |"
        f" {summary['duplicates']} | {len(summary['leftovers'])} | {spread} |"
        f" {summary['violations']} | {summary['seconds']:.0f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seeds", nargs="+", type=int)
    parser.add_argument("--short", action="store_true", help="the suite's short soak")
    args = parser.parse_args()
    summaries, codes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            report = Path(tmp, f"{seed}.json")
            codes.append(run(seed, not args.short, report))
            if report.exists():
                summaries.append(json.loads(report.read_text()))
            else:
                print(f"seed {seed}: no summary (the soak stopped early; see above)")
    print(
        "\n| seed | tasks | faults | lost | duplicates | leftovers"
        " | lost after answering (median / max s) | violations | seconds |"
    )
    print("|" + " --- |" * 9)
    for summary in summaries:
        print(row(summary))
    return 0 if not any(codes) else 1


if __name__ == "__main__":
    sys.exit(main())
