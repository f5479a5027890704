"""The ``labtasker`` command: ``main``, the console-script entry point.

The app and what every command shares live in ``cli/app.py``; each command group lives in its
own module and registers itself on ``app`` when ``_register`` imports ``cli/commands.py``.
"""

from __future__ import annotations

import sys

from dispatcher.cli.app import app, fail
from dispatcher.errors import DispatcherError

__all__ = ["app", "main"]


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from dispatcher.cli import commands  # noqa: F401


def main() -> None:
    """Console-script entry point."""
    _register()
    try:
        app(standalone_mode=True)
    except DispatcherError as err:  # raised outside a command body (rare)
        fail(err)
    sys.exit(0)
