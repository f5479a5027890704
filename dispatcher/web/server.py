"""The dashboard's HTTP server: the standard library's ``ThreadingHTTPServer``, bound to
127.0.0.1. It serves the page and its static files (package data, nothing from the network), the
JSON API (``routes``) and a server-sent-event stream of the overview.

Every request needs the token (``?token=`` or the ``X-Labtasker-Token`` header), else 403; a write
(POST) also needs an ``Origin`` equal to the address it was sent to, else 403. Every answer carries
a strict Content-Security-Policy: scripts and styles only from this server, no inline code.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from dispatcher.errors import DispatcherError, TaskNotFoundError, UsageError

if TYPE_CHECKING:
    from dispatcher.web.routes import Api

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: How often the event stream looks for a changed overview, in seconds.
PUSH_EVERY = 0.5
#: The largest request body accepted (an action's JSON is a few bytes).
MAX_BODY = 64 * 1024
#: A comment line on an idle event stream this often, so that a dead client is noticed.
KEEPALIVE = 15.0
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml", ".txt": "text/plain", ".png": "image/png"}  # fmt: skip


def static_file(name: str) -> bytes | None:
    """A file shipped under ``dispatcher/web/static`` (None: no such file)."""
    if not name or "/" in name or name.startswith("."):
        return None
    entry = resources.files("dispatcher.web").joinpath("static", name)
    return entry.read_bytes() if entry.is_file() else None


class Dashboard(ThreadingHTTPServer):
    """The server: its API, its token, and a flag that ends the event streams."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, api: Api, port: int = 0, host: str = "127.0.0.1") -> None:
        self.api = api
        self.token = secrets.token_urlsafe(24)
        self.stopping = threading.Event()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/?token={self.token}"

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    """One request: token and origin checks, then a static file, an API answer or the stream."""

    server: Dashboard
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal is the user's
        return

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _common_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value, default=str).encode())

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _authorised(self, params: dict[str, str]) -> bool:
        given = params.get("token") or self.headers.get("X-Labtasker-Token") or ""
        return hmac.compare_digest(given.encode(), self.server.token.encode())

    def _parse(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path, dict(parse_qsl(parts.query))

    def do_GET(self) -> None:
        path, params = self._parse()
        if not self._authorised(params):
            self._error(HTTPStatus.FORBIDDEN, "a valid token is needed: open the address"
                        " `labtasker ui` printed")  # fmt: skip
            return
        try:
            self._get(path, params)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except TaskNotFoundError as err:
            self._error(HTTPStatus.NOT_FOUND, str(err))
        except UsageError as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
        except DispatcherError as err:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))

    def _get(self, path: str, params: dict[str, str]) -> None:
        api = self.server.api
        if path in ("/", "/index.html"):
            page = static_file("index.html") or b""
            self._send(200, page.replace(b"{{TOKEN}}", self.server.token.encode()), "text/html")
        elif path.startswith("/static/"):
            name = path.removeprefix("/static/")
            body = static_file(name)
            if body is None:
                self._error(HTTPStatus.NOT_FOUND, f"no file {name}")
            else:
                suffix = name[name.rfind(".") :]
                self._send(200, body, _TYPES.get(suffix, "application/octet-stream"))
        elif path == "/api/overview":
            self._json(api.overview())
        elif path == "/api/queue":
            self._json(api.queue(params))
        elif path == "/api/timeline":
            self._json(api.timeline())
        elif path == "/api/results":
            self._json(api.results())
        elif path == "/api/events":
            self._stream()
        elif path.startswith("/api/task/"):
            tail = path.removeprefix("/api/task/").split("/")
            task_id = _int(tail[0])
            if tail[1:] == ["log"]:
                self._json(api.log(task_id, _int(params.get("offset", "0"))))
            elif len(tail) == 1:
                self._json(api.task(task_id))
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route {path}")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route {path}")

    def do_POST(self) -> None:
        path, params = self._parse()
        host = self.headers.get("Host", "")
        if not self._authorised(params) or self.headers.get("Origin") != f"http://{host}":
            self._error(HTTPStatus.FORBIDDEN, "a write needs the token and a same-origin request")
            return
        if self.server.api.read_only:
            self._error(HTTPStatus.FORBIDDEN, "read-only: labtasker ui was started --read-only")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY:
                raise UsageError(f"a request body holds at most {MAX_BODY} bytes")
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            parts = path.removeprefix("/api/task/").split("/")
            if not path.startswith("/api/task/") or len(parts) != 2 or not isinstance(body, dict):
                raise UsageError(f"no route {path}")
            self._json(self.server.api.act(_int(parts[0]), parts[1], body))
        except TaskNotFoundError as err:
            self._error(HTTPStatus.NOT_FOUND, str(err))
        except (UsageError, ValueError) as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
        except DispatcherError as err:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))

    def _stream(self) -> None:
        """Server-sent events: the overview each time it changes, checked every PUSH_EVERY."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self._common_headers()
        self.end_headers()
        self.close_connection = True
        last, quiet_since = b"", time.monotonic()
        while not self.server.stopping.is_set():
            try:
                now = json.dumps(self.server.api.overview(), default=str).encode()
            except DispatcherError as err:
                now = json.dumps({"error": str(err)}).encode()
            if now != last:
                self.wfile.write(b"event: overview\ndata: " + now + b"\n\n")
                self.wfile.flush()
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE:
                self.wfile.write(b": keepalive\n\n")
                self.wfile.flush()
                quiet_since = time.monotonic()
            self.server.stopping.wait(PUSH_EVERY)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a number") from None
