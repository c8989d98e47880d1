"""What a node daemon tells the autoscaler: its queued demand and how long it has been idle.

Pure helpers for ``Raylet``'s load report (no I/O): the shapes of the lease requests
waiting here, counted, and an idle clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ember._private import resources as res
from ember.raylet.leases import LeaseRequest


def queued_demand(pending: Iterable[LeaseRequest], available: res.Resources | None = None) -> list[list[Any]]:
    """``[[shape, count], ...]`` of the requests waiting here (shape: ``{resource: float}``).

    Requests for a placement group's renamed resources are left out: they wait for
    the group, whose bundles the control service counts as demand of their own. So are
    requests the node's ``available`` resources hold (in queue order): they wait only for
    a worker to start here. That matters on a node that just joined: the request another
    node sent it still shows in that node's last report, and counting it here too would
    make the autoscaler launch a second node for one request.
    """
    room = dict(available) if available is not None else None
    counts: dict[tuple[tuple[str, int], ...], int] = {}
    for req in pending:
        if any("_group_" in name for name in req.resources):
            continue
        if room is not None and res.fits(req.resources, room):
            res.subtract(room, req.resources)
            continue
        key = tuple(sorted(req.resources.items()))
        counts[key] = counts.get(key, 0) + 1
    return [[res.to_float(dict(key)), count] for key, count in counts.items()]


def fits_any(request: res.Resources, shapes: Iterable[res.Resources]) -> bool:
    """True when some shape (a node type the autoscaler can launch) could run ``request``."""
    return any(res.fits(request, shape) for shape in shapes)


class IdleClock:
    """Seconds since the node last had work (a lease, a queued request or a placement-group bundle)."""

    def __init__(self, now: float) -> None:
        self._idle_since: float | None = now

    def update(self, busy: bool, now: float) -> float:
        if busy:
            self._idle_since = None
            return 0.0
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since
