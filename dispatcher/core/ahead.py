"""Submitting dependents ahead to a SLURM cluster: which of them go this round. Pure, no I/O.

A pending task whose dependencies not met yet all run on one cluster (``core.deps.gates``) may
be submitted there before they end, SLURM holding it back (``--dependency``: afterok, afterany,
afternotok on their jobs): it starts when they allow it, without waiting for a poll and a
round trip through the controller, which may be closed by then. Such a task takes a job the
cluster has left after the round's plan (``max_jobs``), in priority order, then by id; its
sweep's ``max_running`` still holds, and a cluster that refuses its GPU needs never takes it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

from dispatcher.core.scheduler import Candidate, Placement, need_of
from dispatcher.core.slurm import ClusterOffer, cluster_refusal


def place_ahead(
    ahead: Sequence[tuple[Candidate, str]],
    offers: Mapping[str, ClusterOffer],
    free_jobs: MutableMapping[str, int],
    running: MutableMapping[str, int],
) -> list[Placement]:
    """Place the (candidate, cluster) pairs of ``ahead`` on their cluster while it has jobs to
    spare (``free_jobs``, taken as they are used); ``running`` counts each sweep's active
    tasks, the round's placements included, and grows with these."""
    out: list[Placement] = []
    for c, host in sorted(ahead, key=lambda a: (-a[0].priority, a[0].id)):
        offer = offers.get(host)
        if offer is None or free_jobs.get(host, 0) <= 0:
            continue
        if cluster_refusal(offer, *need_of(c)[::2]) is not None:
            continue
        if c.max_running is not None and c.group is not None:
            if running.get(c.group, 0) >= c.max_running:
                continue
            running[c.group] = running.get(c.group, 0) + 1
        free_jobs[host] -= 1
        out.append(Placement(c.id, host, ()))
    return out
