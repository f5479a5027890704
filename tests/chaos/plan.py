"""What a soak will do, drawn from its seed: task sleeps, and which fault strikes which host,
when (after how many tasks are done) and for how long. Pure: no I/O, no clock."""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS = (
    "controller_kill",  # kill -9 the dispatcher, start a new one
    "controller_stop",  # SIGSTOP the dispatcher, SIGCONT it later (a laptop asleep)
    "drop_connections",  # kill the host's sshd session processes
    "sshd_outage",  # listener down and sessions dropped for a while
    "stalled_session",  # freeze the session, kill -9 and restart the dispatcher, thaw later
    "host_crash",  # every process of the host's user killed, files kept, back after a while
    "helper_stop",  # SIGSTOP the helper, SIGCONT it later
)


@dataclass(frozen=True)
class Size:
    """How big a soak is."""

    tasks: int
    faults: int


SHORT = Size(tasks=300, faults=16)
FULL = Size(tasks=2000, faults=100)


@dataclass(frozen=True)
class Fault:
    """One fault: strikes ``host`` once ``at_done`` tasks are done, holds ``hold`` seconds."""

    kind: str
    at_done: int
    host: str
    hold: float


@dataclass(frozen=True)
class Plan:
    """Everything random in a soak, drawn from its seed."""

    seed: int
    slots: dict[str, int]
    sleeps: tuple[float, ...]
    faults: tuple[Fault, ...]

    @classmethod
    def make(cls, seed: int, size: Size, slots: dict[str, int]) -> Plan:
        """Every fault kind at least twice; faults between 4% and 85% of the tasks done."""
        rng = random.Random(seed)
        sleeps = tuple(round(rng.uniform(0.05, 0.6), 2) for _ in range(size.tasks))
        kinds = [k for k in KINDS for _ in range(2)]
        kinds += [rng.choice(KINDS) for _ in range(size.faults - len(kinds))]
        rng.shuffle(kinds)
        low, high = size.tasks * 4 // 100, size.tasks * 85 // 100
        marks = sorted(rng.randint(low, high) for _ in kinds)
        hosts = sorted(slots)
        faults = tuple(
            Fault(kind, mark, rng.choice(hosts), round(rng.uniform(1.0, 4.0), 2))
            for kind, mark in zip(kinds, marks, strict=True)
        )
        return cls(seed, slots, sleeps, faults)
