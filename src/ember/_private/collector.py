"""How often Python's cyclic garbage collector runs in Ember's processes and in a connected driver.

CPython collects its youngest generation whenever 700 more container objects were
allocated than freed. A process with many tasks in flight keeps thousands of them alive
for a few milliseconds (specs, task entries, references, futures): each collection walks
them all and moves them to an older generation, which is then collected in turn, only for
reference counting to free them moments later. On "tasks async" (1,000 tasks in flight)
that was about 9 µs of the driver's ~80 µs of CPU per task and 1.2 µs of each worker's.
With a young-generation threshold of 20,000 (``gc_young_threshold``) a steady stream of
tasks rarely triggers a collection, and cyclic garbage still is collected after at most
that many new containers (a few MB). The driver gets its own threshold back at ``shutdown``.
"""

from __future__ import annotations

import gc

from ember._private.config import config

Thresholds = tuple[int, int, int]


def raise_young_threshold() -> Thresholds | None:
    """Raise the youngest generation's threshold to ``gc_young_threshold`` (0: leave it); the
    thresholds before, if changed."""
    wanted = config().gc_young_threshold
    before = gc.get_threshold()
    if wanted <= 0 or before[0] >= wanted or before[0] == 0:  # 0: the program turned collection off
        return None
    gc.set_threshold(wanted, before[1], before[2])
    return before


def restore_threshold(before: Thresholds | None) -> None:
    """Undo :func:`raise_young_threshold`, unless the program changed the thresholds since."""
    if before is not None and gc.get_threshold()[0] == config().gc_young_threshold:
        gc.set_threshold(*before)
