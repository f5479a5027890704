"""The soak: many short tasks over three real sshd hosts while seeded faults strike, judged from
the hosts' own journals (``journal.py``).

The short soak runs in the suite with a fixed seed. ``LABTASKER_SOAK=full`` runs the full one
(2,000 tasks, 100 faults) and ``LABTASKER_SOAK_SEED`` picks the seed; with ``-s`` the summary is
printed, and ``LABTASKER_SOAK_REPORT=FILE`` also writes it there as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.chaos.plan import FULL, SHORT, Plan
from tests.chaos.soak import Soak
from tests.integration.faults_lab import FaultLab

# Read at import: the suite's autouse fixture removes LABTASKER_* variables before each test.
FULL_SOAK = os.environ.get("LABTASKER_SOAK", "") == "full"
SEED = int(os.environ.get("LABTASKER_SOAK_SEED") or 20240613)
REPORT = os.environ.get("LABTASKER_SOAK_REPORT")
#: Three hosts, each with its own user (its own home and state dir), no GPUs, several slots.
SLOTS = {"gpu2": 4, "gpu1": 3, "nfs1": 4}


@pytest.mark.sshd
@pytest.mark.slow
def test_soak_never_twice_nothing_lost_nothing_left(faults: FaultLab, tmp_path: Path) -> None:
    plan = Plan.make(SEED, FULL if FULL_SOAK else SHORT, SLOTS)
    soak = Soak(faults, plan, tmp_path)
    try:
        soak.run()
    finally:
        soak.clean_up()
    verdict = soak.verdict()
    print(f"\n{verdict.text()}")
    if REPORT:
        Path(REPORT).write_text(json.dumps(verdict.summary, indent=2) + "\n")
    assert not verdict.violations, verdict.text()
