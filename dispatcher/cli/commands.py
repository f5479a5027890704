"""Imports every command module so that each registers its commands on the app."""

from dispatcher.cli import demo, dispatch, hosts, queue, queue_edit, results, show, status  # noqa: F401
