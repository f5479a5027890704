"""Small helpers shared by the CLI's command modules: opening the store, state filters, printing.

The store (and so duckdb) and rich are imported inside the functions, keeping ``--help`` fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Annotated

import typer

# typer < 0.29 (pyproject.toml) parses with its own copy of click, whose errors these are.
from typer._click.core import Context as ClickContext
from typer._click.exceptions import NoSuchOption
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperCommand

from dispatcher.cli.app import db_option, fail
from dispatcher.core.models import TaskState, parse_state
from dispatcher.errors import DispatcherError

if TYPE_CHECKING:
    from dispatcher.core.batch import TaskBatch
    from dispatcher.store.queue import Store

StateOption = Annotated[
    list[str] | None,
    typer.Option(
        "--state", "-s", help="Only tasks in this state (repeatable).", show_default=False
    ),
]


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Turn a ``DispatcherError`` raised inside into one red line and its exit code."""
    # main() catches these too; catching here also covers direct app() calls (tests, embedding).
    try:
        yield
    except DispatcherError as err:
        fail(err)


def open_store(
    ctx: typer.Context, *, create: bool = False, batch: TaskBatch | None = None
) -> Store:
    """The queue named by ``--db`` or ``$LABTASKER_DB``, else the nearest project queue; one
    line and exit 1 when there is none, unless ``create`` (only ``queue add`` creates one; not
    for a ``batch`` whose dependencies cannot be in a queue that does not exist yet)."""
    from dispatcher.config.paths import locate_db
    from dispatcher.store.add import refuse_dependencies_without_queue
    from dispatcher.store.queue import Store

    with reported():
        if batch is not None:
            refuse_dependencies_without_queue(locate_db(db_option(ctx))[0], batch)
        return Store.open_default(db_option(ctx), create=create)


def states(values: Sequence[str] | None) -> list[TaskState] | None:
    """``--state`` values as states (None when none given); UsageError names a bad one."""
    return None if not values else [parse_state(v) for v in values]


def out(text: str) -> None:
    """Print rich markup to stdout."""
    from rich.console import Console

    Console(highlight=False, soft_wrap=True).print(text)


def note(text: str, style: str = "yellow") -> None:
    """Print plain ``text`` (markup escaped) to stderr in ``style``."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[{style}]{escape(text)}[/]")


class AddCommand(TyperCommand):
    """``queue add``, whose unknown options most often belong to a command given without ``--``:
    the error says so."""

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except NoSuchOption as err:
            raise ClickUsageError(
                f"{err.format_message()}. If {err.option_name} belongs to your command, put the"
                " command after --, e.g. labtasker queue add --grid lr=0.1,0.01"
                " -- python train.py --lr %{lr}",
                ctx=err.ctx,
            ) from None
