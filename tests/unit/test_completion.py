"""Shell completion as docs/getting-started.md describes it: typer's, under the name labtasker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Runs the CLI as the installed ``labtasker`` script would: completion keys off the program name.
AS_LABTASKER = "import sys; sys.argv[0] = 'labtasker'; from dispatcher.cli import main; main()"


def labtasker(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-c", AS_LABTASKER, *args],
        capture_output=True, text=True, env=full, timeout=60, check=False,
    )  # fmt: skip


def test_show_completion_prints_a_bash_script_for_labtasker() -> None:
    done = labtasker("--show-completion", "bash")
    assert done.returncode == 0, done.stderr
    assert "_LABTASKER_COMPLETE=complete_bash" in done.stdout
    assert "complete -o default -F _labtasker_completion labtasker" in done.stdout


def test_the_script_completes_commands_and_options() -> None:
    bash = {"_LABTASKER_COMPLETE": "complete_bash", "COMP_CWORD": "1"}
    done = labtasker(**bash, COMP_WORDS="labtasker que")
    assert done.stdout.split() == ["queue"], done.stderr
    done = labtasker(**{**bash, "COMP_CWORD": "2"}, COMP_WORDS="labtasker status --wa")
    assert done.stdout.split() == ["--watch"], done.stderr
