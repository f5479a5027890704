"""Output globs: the one rule for what a pattern of files to copy back may be. Pure: no I/O.

A glob names files inside the task's working directory: not empty, not absolute, no ``..``.
hosts.toml ``outputs``, ``queue add --output`` (and the API's ``outputs``) and the copy itself
all ask ``glob_problem``.
"""

from __future__ import annotations

from typing import Any


def glob_problem(pattern: Any) -> str | None:
    """Why ``pattern`` may not be an output glob (None when it may)."""
    if not isinstance(pattern, str):
        return f"is a {type(pattern).__name__}, not a pattern"
    if not pattern.strip() or "\0" in pattern:
        return "is empty"
    if pattern.startswith(("/", "~")):
        return "is absolute; write it relative to the task's working directory"
    if ".." in pattern.replace("\\", "/").split("/"):
        return "contains `..`; outputs must stay inside the task's working directory"
    return None
