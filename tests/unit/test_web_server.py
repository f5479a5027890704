"""``labtasker ui`` over plain HTTP: the token on every request, the same-origin check on writes,
the Content-Security-Policy, ``--read-only``, the queue table's server-side filters, sorting and
paging, the once-a-second gate on queue reads, and the static files in the installed package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatcher.cli import _register, app
from dispatcher.store.queue import Store
from dispatcher.web.reader import Reader
from dispatcher.web.routes import _overview
from tests.web_ui import REPO, UiServer, cli_env, ui_server

_register()
ROUTES = ("/", "/static/app.js", "/static/charts.js", "/static/style.css", "/api/overview",
          "/api/queue", "/api/timeline", "/api/results", "/api/task/1", "/api/task/1/log",
          "/api/events")  # fmt: skip


def add(db: Path, *args: str) -> list[int]:
    result = CliRunner().invoke(app, ["--db", str(db), "queue", "add", "--json", "--gpus", "0",
                                      "--cmd", "echo %{lr} %{seed}", *args])  # fmt: skip
    assert result.exit_code == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    return list(out["ids"] if isinstance(out, dict) else out)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "q.duckdb"
    add(path, "--name", "sweep-a", "--grid", "lr=0.1,0.01,0.001", "--grid", "seed=1,2")
    add(path, "--name", "other", "--grid", "lr=0.5", "--grid", "seed=7", "--priority", "5")
    return path


def test_every_route_refuses_a_request_without_the_token_or_with_a_wrong_one(db: Path) -> None:
    with ui_server(db) as ui:
        for route in ROUTES:
            status, _, body = ui.call(route, token=False)
            assert status == 403, (route, status)
            assert b"token" in body
            status, _, _ = ui.call(f"{route}?token=x{ui.token}", token=False)
            assert status == 403, route
        for route in ROUTES[:-1]:  # the event stream never ends: read on below
            status, headers, _ = ui.call(route)
            assert status == 200, route
            assert "script-src 'self'" in headers["Content-Security-Policy"], route
            assert "default-src 'none'" in headers["Content-Security-Policy"], route
            assert headers["Referrer-Policy"] == "no-referrer", route


def test_the_address_is_on_loopback_and_the_page_loads_no_inline_script(db: Path) -> None:
    with ui_server(db) as ui:
        assert ui.base.startswith("http://127.0.0.1:")
        _, _, page = ui.call("/")
        text = page.decode()
        assert ui.token in text and "{{TOKEN}}" not in text
        assert "<script>" not in text and "<style>" not in text and "http" not in text.lower()


def test_a_write_needs_the_token_and_a_same_origin_request(db: Path) -> None:
    with ui_server(db) as ui:
        cancel = "/api/task/1/cancel"
        assert ui.call(cancel, method="POST", body={})[0] == 403  # no Origin
        assert ui.call(cancel, method="POST", body={}, origin="http://evil.example")[0] == 403
        assert ui.call(cancel, method="POST", body={}, origin=ui.base, token=False)[0] == 403
        assert Store(db).get(1).state == "pending"
        status, _, body = ui.call(cancel, method="POST", body={}, origin=ui.base)
        assert status == 200, body
        assert json.loads(body)["cancelled"] == [1]
        assert Store(db).get(1).state == "cancelled"
        retry = ui.call("/api/task/1/retry", method="POST", body={}, origin=ui.base)
        assert retry[0] == 200 and Store(db).get(1).state == "pending"
        prio = ui.call("/api/task/2/priority", method="POST", body={"priority": 9}, origin=ui.base)
        assert prio[0] == 200 and Store(db).get(2).priority == 9


def test_read_only_refuses_every_write(db: Path) -> None:
    with ui_server(db, "--read-only") as ui:
        for action in ("cancel", "retry", "priority"):
            status, _, _ = ui.call(f"/api/task/1/{action}", method="POST", body={"priority": 1},
                                   origin=ui.base)  # fmt: skip
            assert status == 403, action
        assert ui.get("/api/overview")["read_only"] is True
    assert Store(db).get(1).state == "pending"


def _ids(ui: UiServer, query: str) -> tuple[int, list[int]]:
    page = ui.get(f"/api/queue?{query}")
    return page["total"], [t["id"] for t in page["tasks"]]


def test_the_queue_table_is_filtered_sorted_and_paged_by_the_server(db: Path) -> None:
    Store(db).cancel([3])
    with ui_server(db) as ui:
        assert _ids(ui, "limit=2") == (7, [1, 2])
        assert _ids(ui, "limit=2&offset=2") == (7, [3, 4])
        assert _ids(ui, "state=cancelled") == (1, [3])
        assert _ids(ui, "state=pending,cancelled&limit=3&sort=id&desc=1") == (7, [7, 6, 5])
        assert _ids(ui, "name=other") == (1, [7])
        assert _ids(ui, "sweep=7") == (1, [7])  # a sweep: the first id of its add
        assert _ids(ui, "sort=priority&desc=1&limit=1") == (7, [7])
        assert _ids(ui, "q=0.001") == (2, [5, 6])
        assert ui.call("/api/queue?sort=command")[0] == 400  # only listed columns sort
        assert ui.call("/api/queue?state=sleeping")[0] == 400
        assert ui.call("/api/task/99")[0] == 404


def test_the_queue_file_is_opened_at_most_once_a_second(db: Path) -> None:
    store = Store(db)
    reader = Reader(store)
    start = time.monotonic()
    while time.monotonic() - start < 2.5:
        store.update([1], priority=int(time.monotonic() * 1000) % 1000)  # the file changes
        reader.read("overview", _overview)
        reader.read(("other", 1), _overview)  # another page asked for: the same gate
    elapsed = time.monotonic() - start
    assert 2 <= reader.opens <= int(elapsed) + 1, (reader.opens, elapsed)


def test_an_unchanged_queue_is_answered_from_the_cache(db: Path) -> None:
    reader = Reader(Store(db), min_interval=0.0)
    time.sleep(0.2)  # past the change token's 100 ms window for recent writes
    first = reader.read("overview", _overview)
    for _ in range(5):
        assert reader.read("overview", _overview) == first
    assert reader.opens == 1


@pytest.mark.slow
def test_the_built_wheel_carries_the_static_files(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: a build leaves its files beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "dispatcher", src / "dispatcher",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (REPO / "dispatcher/web/static").iterdir()}
    assert {f"dispatcher/web/static/{n}" for n in shipped} <= names


def test_a_bad_write_is_refused_and_changes_nothing(db: Path) -> None:
    with ui_server(db) as ui:

        def post(path: str, body: dict[str, object]) -> int:
            return ui.call(path, method="POST", body=body, origin=ui.base)[0]

        assert post("/api/task/2/priority", {"priority": "high"}) == 400
        assert post("/api/task/2/explode", {}) == 400
        assert post("/api/task/99/cancel", {}) == 404
        assert post("/api/queue", {}) == 400
    assert Store(db).get(2).priority == 0


def test_port_chooses_the_port_and_a_busy_one_is_one_line(db: Path) -> None:
    with ui_server(db) as first:
        port = int(first.base.rsplit(":", 1)[1])
        argv = [sys.executable, "-m", "dispatcher", "--db", str(db), "ui", "--no-browser"]
        busy = subprocess.run([*argv, "--port", str(port)], capture_output=True, text=True,
                              cwd=db.parent, env=cli_env(), timeout=60)  # fmt: skip
        assert busy.returncode == 2, busy
        assert busy.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}")
        assert busy.stderr.count("\n") == 1 and "choose another --port" in busy.stderr
    with ui_server(db, "--port", str(port)) as second:
        assert second.base == f"http://127.0.0.1:{port}"
        assert second.get("/api/overview")["counts"]["pending"] == 7
