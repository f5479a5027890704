"""Fixtures of the unit tests: a helper run on this machine with a HOME of its own."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helper_harness import LocalHelper


@pytest.fixture
async def helper(tmp_path: Path) -> AsyncIterator[LocalHelper]:
    """The shipped helper started by its bootstrap, state in tmp_path/state (test_helper_ops.py
    has its own, with a stub nvidia-smi on PATH)."""
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    async with LocalHelper(tmp_path / "state", env=env) as h:
        yield h
