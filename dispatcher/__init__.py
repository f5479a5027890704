"""labtasker: an agentless SSH task dispatcher for lab experiments.

The package keeps imports light: ``import dispatcher`` loads nothing heavy, so that
``labtasker --help`` starts fast. ``Queue`` (the Python API) is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dispatcher.api import Queue

__all__ = ["Queue", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Queue":
        from dispatcher.api import Queue

        return Queue
    raise AttributeError(name)
