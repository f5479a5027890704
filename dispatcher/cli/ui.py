"""``labtasker ui``: serve the web dashboard (``dispatcher.web``) for the queue until Ctrl-C."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dispatcher.cli.app import app
from dispatcher.cli.common import open_store, reported
from dispatcher.cli.dispatch import HostsOption
from dispatcher.errors import UsageError


@app.command()
def ui(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="Port (0: a free one).")
    ] = 0,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the address; open no browser.")
    ] = False,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Show the queue; refuse cancel, retry, priority.")
    ] = False,
    hosts: HostsOption = Path("hosts.toml"),
) -> None:
    """Serve a live dashboard of the queue on 127.0.0.1: overview with GPUs, timeline, queue,
    tasks with their logs, results and plots. Prints its address (with its token); from another
    machine, forward the port: ssh -L PORT:127.0.0.1:PORT THIS_MACHINE."""
    from dispatcher.web.reader import Reader
    from dispatcher.web.routes import Api
    from dispatcher.web.server import Dashboard

    with reported():
        store = open_store(ctx)
        try:
            server = Dashboard(Api(Reader(store), hosts, read_only=read_only), port)
        except OSError as err:
            raise UsageError(
                f"cannot listen on 127.0.0.1:{port}: {err.strerror}; choose another --port"
            ) from None
    sys.stdout.write(f"labtasker ui: {server.url}\n")
    sys.stdout.flush()
    if not no_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()
