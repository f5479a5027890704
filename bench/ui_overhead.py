"""Dispatch throughput with the dashboard open vs closed: a busy sweep of ``true`` tasks on a
``local`` host with 8 slots, once with no ``labtasker ui`` and once with one serving a page that
follows the overview's event stream and reloads the queue table (running tasks) and the timeline
every half second, as an open browser tab would. Interleaved runs; the target is the issue's:
within 5 % of the closed throughput.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import Config, Row, Section, Stats, cli_argv, cli_env, run_cli


def _follow(url: str, stop: threading.Event) -> None:
    """Read the event stream until ``stop`` (the server closing it ends the read too)."""
    try:
        with urllib.request.urlopen(url, timeout=600) as stream:
            while not stop.is_set() and stream.readline():
                pass
    except OSError:
        pass


def _poll(base: str, token: str, stop: threading.Event) -> None:
    while not stop.is_set():
        for path in ("/api/queue?state=running&limit=50", "/api/timeline", "/api/overview"):
            sep = "&" if "?" in path else "?"
            try:
                with urllib.request.urlopen(f"{base}{path}{sep}token={token}", timeout=60) as r:
                    r.read()
            except OSError:
                pass
        stop.wait(0.5)


def dispatch_once(n: int, *, ui: bool) -> float:
    """Seconds ``dispatch`` takes to run ``n`` tasks, with or without the dashboard open."""
    with tempfile.TemporaryDirectory(prefix="labtasker-bench-ui-") as name:
        work = Path(name)
        db, toml = work / "q.duckdb", work / "hosts.toml"
        toml.write_text("[hosts.local]\ngpus = 0\nslots = 8\n")
        grid = f"i={','.join(map(str, range(n)))}"
        run_cli(db, "queue", "add", "--grid", grid, "--", "true", "%{i}", cwd=work)
        server, stop, threads = None, threading.Event(), []
        if ui:
            server = subprocess.Popen(cli_argv(db, "ui", "--no-browser"), env=cli_env(),
                                      cwd=work, stdout=subprocess.PIPE, text=True)  # fmt: skip
            assert server.stdout is not None
            url = server.stdout.readline().split(": ", 1)[1].strip()
            base, _, token = url.partition("/?token=")
            threads = [
                threading.Thread(target=_follow, args=(f"{base}/api/events?token={token}", stop)),
                threading.Thread(target=_poll, args=(base, token, stop)),
            ]
            for t in threads:
                t.start()
        try:
            start = time.perf_counter()
            argv = cli_argv(db, "dispatch", "--hosts", str(toml))
            done = subprocess.run(
                argv, env=cli_env(), cwd=work, capture_output=True, text=True, timeout=1800
            )
            took = time.perf_counter() - start
        finally:
            stop.set()
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            for t in threads:
                t.join(timeout=30)
        if done.returncode != 0 or f"{n} succeeded" not in done.stdout:
            raise SystemExit(f"dispatch failed ({done.returncode}): {done.stdout[-800:]}")
        return took


def run(cfg: Config) -> Section:
    n = cfg.pick(1000, 300)
    runs = cfg.pick(5, 2)
    closed: list[float] = []
    opened: list[float] = []
    for _ in range(runs):
        closed.append(n / dispatch_once(n, ui=False))
        opened.append(n / dispatch_once(n, ui=True))
    c, o = Stats.of(closed), Stats.of(opened)
    share = o.median / c.median
    section = Section(
        "Dispatch with the dashboard open",
        "python3 bench/run.py --only ui_overhead",
        f"{n} tasks running `true` on a `local` host with `slots = 8`; `dispatch` timed from start"
        " to exit. Open: a `labtasker ui` on the same queue, one client following its event"
        " stream and another reloading the running tasks' page of the queue table, the timeline"
        f" and the overview every 0.5 s. {runs} interleaved runs.",
    )
    section.rows += [
        Row("dispatch, dashboard closed", c, "tasks/s"),
        Row(
            "dispatch, dashboard open",
            o,
            "tasks/s",
            vs=f"{share:.2f} of closed",
            target="within 5% of closed",
            met=share >= 0.95,
        ),
    ]
    return section
