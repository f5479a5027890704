"""The settings of a ``kind = "slurm"`` host: a SLURM cluster reached through its login node.

Owns the SLURM keys of a hosts.toml host table, their checks and defaults, and how a cluster's
host settings differ from an SSH host's (no nvidia-smi on the login node, run records on the
shared ``workdir``). What is sent to ``sbatch`` is built from them in ``core/slurm.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from dispatcher.config.values import _fail, duration, integer, string
from dispatcher.errors import ConfigError

#: The fewest seconds between two polls of the cluster: slurmctld serves everyone.
MIN_POLL = 5.0
KINDS = ("ssh", "slurm")


def kind(value: Any) -> str:
    if value not in KINDS:
        _fail('"ssh" or "slurm"', value)
    return str(value)


def _poll(value: Any) -> float:
    seconds = duration(positive=True)(value)
    if seconds < MIN_POLL:
        _fail(f"at least {MIN_POLL:.0f} s (slurmctld serves everyone)", value)
    return seconds


def _option(value: Any) -> str:
    # A name for sbatch: letters, digits and what SLURM's own names use; never shell text.
    text = string()(value)
    if not re.fullmatch(r"[A-Za-z0-9_.:,+\-=@/]{1,200}", text):
        _fail("a SLURM name (letters, digits and _ . : , + - = @ /)", value)
    return text


def _sbatch_args(value: Any) -> tuple[str, ...]:
    ok = isinstance(value, list) and all(
        isinstance(a, str) and a.startswith("--") and "\0" not in a and "\n" not in a for a in value
    )
    if not ok:
        _fail('a list of long sbatch options like ["--mem=32G"]', value)
    return tuple(value)


#: SLURM keys: check, default. Only a ``kind = "slurm"`` host may set them.
SLURM_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "partition": (_option, None),
    "account": (_option, None),
    "qos": (_option, None),
    "time": (duration(positive=True), None),
    "constraint": (_option, None),
    "gres": (_option, None),
    "sbatch_args": (_sbatch_args, ()),
    "max_jobs": (integer(1), 100),
    "poll_interval": (_poll, 30.0),
}


@dataclass(frozen=True)
class SlurmSettings:
    """How labtasker submits to one cluster (docs/hosts.md, "SLURM clusters")."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: float | None = None  # seconds: the job time limit of tasks without --timeout
    constraint: str | None = None
    gres: str | None = None  # "gpu" or "gpu:TYPE": --gpus N asks for N of these
    sbatch_args: tuple[str, ...] = ()
    max_jobs: int = 100  # our array elements queued or running at once, at most
    poll_interval: float = 30.0

    @property
    def gpu_type(self) -> str | None:
        """The GPU type ``gres`` names ("gpu:a100" -> "a100"), or None."""
        parts = (self.gres or "").split(":")
        return parts[1] if len(parts) > 1 and parts[1] and not parts[1].isdigit() else None


def slurm_settings(
    merged: MutableMapping[str, Any],
    given: set[str],
    error: Callable[[str, str], ConfigError],
) -> SlurmSettings | None:
    """Take the SLURM keys out of a host's ``merged`` settings; settle what a cluster changes.

    ``given``: the keys the host or [defaults] wrote. A SLURM key on an SSH host, or a cluster
    without ``workdir`` (the directory its compute nodes share) or with ``gpus``, is an error.
    """
    values = {k: merged.pop(k) for k in SLURM_KEYS}
    if merged["kind"] != "slurm":
        stray = [k for k in SLURM_KEYS if k in given]
        if stray:
            raise error(stray[0], f'`{stray[0]}` is a SLURM setting; add kind = "slurm"')
        return None
    if merged["workdir"] is None:
        raise error(
            "kind",
            'kind = "slurm" needs `workdir`: a directory on a file system the compute nodes '
            'share, like workdir = "/scratch/me/labtasker"',
        )
    if "gpus" in given or "slots" in given:
        key = "gpus" if "gpus" in given else "slots"
        raise error(key, f"`{key}` does not apply to a SLURM cluster: use `gres` and `max_jobs`")
    settings = SlurmSettings(**values)
    merged["gpus"], merged["slots"] = (), settings.max_jobs
    if "state_dir" not in given:  # run records must be where the compute nodes see them
        merged["state_dir"] = merged["workdir"].rstrip("/") + "/.labtasker"
    if "sync" not in given:
        merged["sync"] = True  # `workdir` is the shared directory, not the code's
    return settings
