"""The real limits on how many more actor processes this node can start.

Task workers are capped by ``max_workers`` (they are reused and queue work);
an actor holds a process for its whole life, so actors are limited only by
what the machine can give: file descriptors of the node daemon (each worker
costs it a connection and its log files), memory (above the memory monitor's
threshold a new process would only be killed again), and an optional
configured maximum (``max_actor_workers``). ``actor_worker_room`` answers how
many may start and, when that is fewer than asked, why; the caller fails the
creations it cannot serve with that message instead of leaving them waiting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: File descriptors the node daemon spends per worker (its connection, log reads, a spare).
FDS_PER_WORKER = 4
#: Descriptors kept free for everything else (clients, transfers, spill files).
FD_HEADROOM = 128


@dataclass
class Room:
    count: int
    reason: str = ""


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def actor_worker_room(
    wanted: int,
    *,
    actor_workers: int,
    max_actor_workers: int,
    fds_open: int,
    fd_limit: int,
    memory_fraction: float,
    memory_threshold: float,
) -> Room:
    """How many of ``wanted`` new actor processes may start now, and why not more."""
    room = wanted
    reasons = []
    if max_actor_workers > 0 and actor_workers + room > max_actor_workers:
        room = max(0, max_actor_workers - actor_workers)
        reasons.append(max_actors_reason(actor_workers, max_actor_workers))
    fd_room = max(0, (fd_limit - FD_HEADROOM - fds_open) // FDS_PER_WORKER)
    if fd_room < room:
        room = fd_room
        reasons.append(
            f"its node daemon has {fds_open} of its {fd_limit} file descriptors open and needs "
            f"{FDS_PER_WORKER} per worker; raise the open-files limit (ulimit -n) of the node"
        )
    if memory_threshold < 1.0 and memory_fraction > memory_threshold:
        room = 0
        reasons.append(
            f"the node's memory is {100 * memory_fraction:.0f}% used, above the memory monitor's "
            f"threshold of {100 * memory_threshold:.0f}% (a new process would be killed)"
        )
    return Room(room, "; ".join(reasons))


def max_actors_reason(actor_workers: int, max_actor_workers: int) -> str:
    return (
        f"this node already runs {actor_workers} actor processes, the maximum set by "
        f"EMBER_max_actor_workers={max_actor_workers}"
    )
