"""Lineage: re-running the task that made a value when the value is lost.

The owner keeps the spec of every finished task whose result lives in an
object store (an inline result cannot be lost while its owner lives), for
as long as any of its results is referenced, and keeps that task's
arguments alive with it. When a result is found missing (its node died, its
file vanished), ``reconstruct`` re-submits the task with the same ids,
spending one of its ``max_retries``; arguments found missing while it runs
are reconstructed the same way, recursively. A lost ``put`` value cannot be
recomputed.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ember._private.ids import task_id_of
from ember.core.task_state import TaskEntry, TaskStatus
from ember.exceptions import (
    ObjectLostError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
)

if TYPE_CHECKING:
    from ember.core.worker import CoreWorker


def is_put_object(object_id: bytes) -> bool:
    return bool(struct.unpack(">I", object_id[16:20])[0] & 0x80000000)


class Lineage:
    def __init__(self, worker: CoreWorker) -> None:
        self.worker = worker
        self.entries: dict[bytes, TaskEntry] = {}

    def keep(self, entry: TaskEntry) -> None:
        self.entries[entry.spec["tid"]] = entry

    def on_object_freed(self, object_id: bytes) -> None:
        task_id = task_id_of(object_id)
        entry = self.entries.get(task_id)
        if entry is None or not entry.done:
            return
        counter = self.worker.reference_counter
        if not any(counter.has_reference(rid) for rid in entry.return_ids):
            del self.entries[task_id]
            if entry.arg_ids:
                counter.remove_submitted(entry.arg_ids)

    def reconstruct(self, object_id: bytes) -> BaseException | None:
        """Start re-running the task that made ``object_id``; on the loop. Returns an error if impossible."""
        if is_put_object(object_id):
            return ObjectLostError(
                object_id.hex(),
                f"Object {object_id.hex()} was created by put() and its only copy was lost (its node died or "
                "its file vanished); put values cannot be recomputed. Keep important data in task results "
                "so Ember can re-run the task, or put it again.",
            )
        entry = self.entries.get(task_id_of(object_id))
        if entry is None:
            return ObjectReconstructionFailedLineageEvictedError(
                object_id.hex(),
                f"Object {object_id.hex()} was lost and the task that created it is no longer known to its owner.",
            )
        if not entry.done:
            return None  # already running again
        if entry.retries_left == 0:
            return ObjectReconstructionFailedMaxAttemptsExceededError(
                object_id.hex(),
                f"Object {object_id.hex()} was lost and re-running {entry.name}() to recover it is not allowed: "
                "the task has no retries left (max_retries).",
            )
        if entry.retries_left > 0:
            entry.retries_left -= 1
        store = self.worker.memory_store
        for rid in entry.return_ids:
            store.delete(rid)
        entry.transition(TaskStatus.PENDING_ARGS_AVAIL, f"result {object_id.hex()} lost; re-running the task")
        entry.lease = None
        self.worker.submitter.resubmit(entry)
        return None
