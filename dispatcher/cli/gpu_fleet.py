"""``queue add``'s help for GPU needs; the check against the fleet is ``dispatch.fleet``."""

from __future__ import annotations

MEMORY_HELP = 'GPU memory each task needs per GPU, like "10GiB"; its GPUs may be shared.'
TYPE_HELP = 'Only GPUs whose name has one of these, like "A100|H100".'
MIN_MEMORY_HELP = 'Only GPUs with at least this much memory, like "40GiB".'
