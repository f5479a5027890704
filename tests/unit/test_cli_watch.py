"""``labtasker status --watch`` through the real CLI: the interval floor, and frames into a pipe."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatcher.core.words import EMPTY_QUEUE
from dispatcher.store.queue import Store
from tests.loop_lab import DEADLINE, REPO


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.parametrize("interval", ["0", "0.05", "-1", "nan"])
def test_watch_refuses_an_interval_under_a_tenth_of_a_second(tmp_path: Path, interval: str) -> None:
    # A subprocess: a build that accepts the interval loops until the deadline kills it.
    argv = [sys.executable, "-m", "dispatcher", "--db", str(tmp_path / "queue.duckdb")]
    try:
        done = subprocess.run(
            [*argv, "status", "--watch", "--interval", interval], cwd=tmp_path, env=cli_env(),
            capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"status --watch --interval {interval} kept running")
    assert done.returncode == 2, done
    message = f"Error: --interval must be at least 0.1 s (got {float(interval):g})"
    assert (done.stderr, done.stdout) == (message + "\n", ""), done


def test_watch_into_a_pipe_prints_a_frame_each_interval_until_sigint(tmp_path: Path) -> None:
    Store(tmp_path / "queue.duckdb").counts()  # a queue without tasks
    argv = [sys.executable, "-m", "dispatcher", "--db", str(tmp_path / "queue.duckdb")]
    proc = subprocess.Popen(
        [*argv, "status", "--watch", "--interval", "0.2"], cwd=tmp_path, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    try:
        # Read what arrives while the command still runs; the deadline only keeps a broken
        # build from hanging the suite.
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            end = time.monotonic() + DEADLINE
            while seen.count(b"Nothing is running.") < 2 and time.monotonic() < end:
                if sel.select(timeout=0.5):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    seen += chunk
        assert proc.poll() is None, "the watch ended by itself"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=DEADLINE)
    out = (seen + rest).decode()
    assert seen.count(b"Nothing is running.") >= 2, (out, err)
    assert proc.returncode == 0, (out, err)
    frames = out.split("-- ")[1:]
    assert len(frames) >= 2 and all(EMPTY_QUEUE in f for f in frames), out
    assert "\x1b[" not in out  # plain text: no colours, no cursor moves
