"""Words shared by messages: plurals, id lists, the empty-queue line, the hints about hosts
and commands that fail. One wording each, so every command says the same thing the same way."""

from __future__ import annotations

from collections.abc import Sequence

#: What every view prints for a queue without tasks (``queue ls``, ``status``, ``results``).
EMPTY_QUEUE = "The queue is empty; add tasks with `labtasker queue add`."


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 task``, ``2 tasks`` (``many``: an irregular plural)."""
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


def id_ranges(ids: Sequence[int], limit: int = 8) -> str:
    """``1-12, 15, 20-21``: sorted ids as ranges, at most ``limit`` ranges, then "…"."""
    ranges: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    return ", ".join(parts) + (", …" if len(ranges) > limit else "")


def ids_text(ids: Sequence[int], limit: int = 8) -> str:
    """``id 32`` for one id, ``ids 1-3, 7`` for several."""
    return f"{'id' if len(set(ids)) == 1 else 'ids'} {id_ranges(ids, limit)}"


def resume_hint(host: str) -> str:
    """What to do about a host suspended for failures."""
    return f"fix the host, then `labtasker hosts resume {host}` or restart dispatch"


def command_fault(why: str, first: int) -> str:
    """The live line for tasks that fail the same way on every host: the command's fault."""
    return (
        f"tasks fail the same way on every host ({why}): the command is the problem, not the"
        f" hosts; `labtasker logs {first}` shows what it printed"
    )
