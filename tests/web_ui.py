"""``labtasker ui --no-browser`` in a subprocess for the dashboard's tests (``UiServer``), plain
HTTP calls to it (``UiServer.call``), and a headless Chromium driven by Selenium
(``chromium_driver``): Debian's ``chromium`` and ``chromium-driver``, passed by path so that
nothing is downloaded. Without them the browser tests skip, and fail under CI (CI=true).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"


def cli_env() -> dict[str, str]:
    """The environment of a labtasker process a test starts: this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABTASKER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["LABTASKER_LOCK_TIMEOUT"] = "30"
    return env


@dataclass
class UiServer:
    """A running ``labtasker ui``: its process, the address it printed, and its token."""

    proc: subprocess.Popen[str]
    url: str

    @property
    def base(self) -> str:
        return self.url.split("/?token=", 1)[0]

    @property
    def token(self) -> str:
        return self.url.split("token=", 1)[1]

    def call(
        self,
        path: str,
        *,
        token: bool = True,
        method: str = "GET",
        body: dict[str, Any] | None = None,
        origin: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; (status, headers, body). ``token``: add ``?token=``."""
        sep = "&" if "?" in path else "?"
        url = f"{self.base}{path}{sep}token={self.token}" if token else f"{self.base}{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if origin is not None:
            request.add_header("Origin", origin)
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, dict(err.headers), err.read()

    def get(self, path: str) -> Any:
        status, _, body = self.call(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


@contextlib.contextmanager
def ui_server(db: Path, *options: str, cwd: Path | None = None) -> Iterator[UiServer]:
    """``labtasker --db DB ui --no-browser OPTIONS`` until the block ends."""
    argv = [sys.executable, "-m", "dispatcher", "--db", str(db), "ui", "--no-browser", *options]
    proc = subprocess.Popen(
        argv, cwd=cwd or db.parent, env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = UiServer(proc, "")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("labtasker ui: http://127.0.0.1:"), (line, proc.communicate())
        server.url = line.split(": ", 1)[1].strip()
        yield server
    finally:
        server.stop()


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMEDRIVER, CHROMIUM):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def chromium_driver() -> Iterator[Any]:
    """A headless Chromium under Selenium that keeps the page's console messages."""
    reason = browser_missing()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    """The page's console messages at level SEVERE since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
