"""``queue add``'s and ``queue update``'s GPU-need options: help and parsing. The check of
needs against the fleet is ``dispatch.fleet``; the edit itself is ``store.edit``."""

from __future__ import annotations

MEMORY_HELP = 'GPU memory each task needs per GPU, like "10GiB"; its GPUs may be shared.'
TYPE_HELP = 'Only GPUs whose name has one of these, like "A100|H100".'
MIN_MEMORY_HELP = 'Only GPUs with at least this much memory, like "40GiB".'
UPDATE_HELP = 'New value, as for `queue add`; "none" removes it.'


def update_needs(
    memory: str | None, gpu_type: str | None, min_memory: str | None
) -> dict[str, int | str | None]:
    """``queue update``'s GPU-need options as the columns they set ("none": cleared)."""
    from dispatcher.core.batch import size_setting

    given = {"gpu_memory": memory, "gpu_type": gpu_type, "min_gpu_memory": min_memory}
    needs: dict[str, int | str | None] = {}
    for column, value in given.items():
        if value is None:
            continue
        if value.strip().lower() == "none":
            needs[column] = None
        elif column == "gpu_type":
            needs[column] = value
        else:
            needs[column] = size_setting(value, column.replace("_", " "))
    return needs
