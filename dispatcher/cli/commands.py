"""Imports every command module so that each registers its commands on the app."""

from dispatcher.cli import demo, dispatch, hosts, queue, results, show, status, ui  # noqa: F401
