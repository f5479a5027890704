"""The ``labtasker`` typer app, the global ``--db`` option and error reporting.

Each command group lives in its own module and registers itself on ``app``; command bodies import
heavy modules (duckdb, asyncssh) inside the function, so ``labtasker --help`` stays fast; help
is click's plain text (rich's markdown help costs ~200 ms). typer is kept below 0.29, which
converts every option value through pydantic (another 150-250 ms per command; pyproject.toml).
Only ``DispatcherError`` is caught: one red line on stderr and its exit code. Anything else is a
bug and shows a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dispatcher.errors import DispatcherError

#: The name this package is installed under (``pip show labtasker-ssh``).
DISTRIBUTION = "labtasker-ssh"

app = typer.Typer(
    name="labtasker",
    help="Queue experiments on your laptop, run them on your lab's GPU servers over SSH.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
    # Plain click help: typer's rich help imports rich.markdown, markdown_it and pygments, about
    # 200 ms of every `--help` on a 2-core machine. Sub-apps inherit this setting.
    rich_markup_mode=None,
)


class Context:
    """Options shared by every command."""

    def __init__(self, db: Path | None) -> None:
        self.db = db


def _version(value: bool) -> None:
    """``--version``: the installed distribution's version, then exit 0."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"{DISTRIBUTION} {version(DISTRIBUTION)}")
    except PackageNotFoundError:
        typer.echo(f"{DISTRIBUTION} (version unknown: not installed, run from a source tree)")
    raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            help="Queue file. Default: $LABTASKER_DB, else .labtasker/queue.duckdb here or above.",
            envvar=None,
        ),
    ] = None,
) -> None:
    ctx.obj = Context(db)


def db_option(ctx: typer.Context) -> Path | None:
    """The ``--db`` value given to the root command (None when not given)."""
    obj = ctx.find_root().obj
    return obj.db if isinstance(obj, Context) else None


def fail(err: DispatcherError) -> None:
    """Print one red line for ``err`` and exit with its code."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]Error:[/] {escape(str(err))}"
    )
    raise SystemExit(err.exit_code)
