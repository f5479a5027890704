"""``labtasker demo``: queue a 3 x 3 grid and dispatch it on this machine, then show results.

Everything lives in one folder (default ./labtasker-demo): the queue, a hosts.toml with a bare
`local` host (which runs tasks in that folder, the queue's project, and keeps its run records
beside the queue), and the logs, so the demo touches nothing else.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

DEMO_HOSTS = """\
# The demo's hosts file: one host, this machine, reached without SSH.
[hosts.local]
slots = {slots}                 # tasks at once (a CPU-only host)
"""


def prepare(folder: Path, slots: int = 4) -> tuple[Path, Path]:
    """Create the demo folder with its script and hosts.toml; returns (db path, hosts path)."""
    folder = folder.resolve()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700, parents=True)
    script = folder / "train.py"
    script.write_bytes(resources.files("dispatcher.demo").joinpath("train.py").read_bytes())
    hosts = folder / "hosts.toml"
    hosts.write_text(
        DEMO_HOSTS.format(slots=slots),
        encoding="utf-8",
    )
    return folder / ".labtasker" / "queue.duckdb", hosts
