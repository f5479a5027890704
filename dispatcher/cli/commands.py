"""Imports every command module so that each registers its commands on the app."""

from dispatcher.cli import (  # noqa: F401
    demo,
    dispatch,
    hosts,
    queue,
    queue_edit,
    results,
    show,
    status,
    ui,
)
