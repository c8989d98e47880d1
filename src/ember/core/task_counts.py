"""This process's share of Ray's ``ray_tasks`` metric: its tasks by state.

As in Ray, every core worker counts what it sees: as *owner* the tasks and actor
calls it submitted (``Source="owner"``: pending, submitted, and since it started,
finished and failed), as *executor* the tasks running in it (``Source="executor"``,
``State="RUNNING"``). Its node daemon sums the counts of its processes and serves
them as ``ray_tasks{Name, State, IsRetry, Source, JobId}``.

The hot path stays small: finished and failed counts change in one observer of
the task state machine that only acts on edges into or out of a terminal state,
and in the two places an actor call ends; running counts change where a task's
context is set and cleared. Live states are counted when a batch is taken, by
walking the submitter's live tasks and actor calls. Every change (a live one too)
pokes the metrics recorder, which sends the counts with its next batch
(``metrics_recorder``): at most one message per ``metrics_report_period_s``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ember.core.task_state import TASK_TRANSITIONS, TaskEntry, TaskStatus
from ember.protocol.core_worker import ActorCallSpec

if TYPE_CHECKING:
    from ember.core.worker import CoreWorker

OWNER = "owner"
EXECUTOR = "executor"
_TERMINAL = frozenset((TaskStatus.FINISHED, TaskStatus.FAILED))
_PUSHED = frozenset((TaskStatus.SUBMITTED_TO_WORKER, TaskStatus.FINISHED, TaskStatus.FAILED))

#: (name, state, is_retry "0"/"1", source, job id) -> count.
Key = tuple[str, str, str, str, bytes]


def _is_retry(entry: TaskEntry, state: TaskStatus) -> str:
    """Whether this is a retry: an attempt after the first (``attempt`` counts pushes that ran or
    failed, not those a blocked worker bounced; a pushed task's count includes its own push)."""
    return "1" if entry.attempt > (1 if state in _PUSHED else 0) else "0"


class TaskCounts:
    def __init__(self, worker: CoreWorker, on_change: Callable[[], None]) -> None:
        self._worker = worker
        self._on_change = on_change
        self._lock = threading.Lock()
        #: Counts kept as they change: finished/failed (owner) and running (executor).
        self._counts: dict[Key, int] = {}
        self._stop_observing = TASK_TRANSITIONS.observe(self._on_task_move)

    def close(self) -> None:
        self._stop_observing()


    def _add(self, key: Key, delta: int) -> None:
        counts = self._counts
        with self._lock:
            counts[key] = counts.get(key, 0) + delta
        self._on_change()

    # ---------------------------------------------------------------- hooks
    def _on_task_move(self, entry: object, old: TaskStatus | None, new: TaskStatus, reason: str) -> None:
        if new in _TERMINAL:
            assert isinstance(entry, TaskEntry)
            self._add((entry.name, new.value, _is_retry(entry, new), OWNER, entry.spec["job"]), 1)
        elif old in _TERMINAL:  # a finished task's lost result is being reconstructed
            assert isinstance(entry, TaskEntry)
            self._add((entry.name, old.value, _is_retry(entry, old), OWNER, entry.spec["job"]), -1)
        else:  # live states are counted when the batch is taken
            self._on_change()

    def changed(self) -> None:
        """A live state changed (an actor call queued or pushed): send the counts again."""
        self._on_change()

    def actor_call_ended(self, spec: ActorCallSpec, failed: bool) -> None:
        state = TaskStatus.FAILED if failed else TaskStatus.FINISHED
        self._add((spec["name"], state.value, "0", OWNER, spec["job"]), 1)

    def running(self, name: str, job: bytes, delta: int) -> None:
        """A task started (+1) or ended (-1) here (the hot path of every execution)."""
        key = (name, "RUNNING", "0", EXECUTOR, job)
        counts = self._counts
        with self._lock:
            counts[key] = counts.get(key, 0) + delta
        self._on_change()

    # ---------------------------------------------------------------- report
    def snapshot(self) -> list[list[Any]]:
        """Every count now, as ``[name, state, is_retry, source, job id, count]`` rows (on the loop)."""
        with self._lock:
            counts = Counter(self._counts)
        for entry in list(self._worker.submitter.tasks.values()):
            if entry.state not in _TERMINAL:
                counts[(entry.name, entry.state.value, _is_retry(entry, entry.state), OWNER, entry.spec["job"])] += 1
        for client in list(self._worker.actor_submitter.clients.values()):
            for call in list(client.queue):
                state = TaskStatus.PENDING_ARGS_AVAIL if call.deps_pending else TaskStatus.PENDING_NODE_ASSIGNMENT
                counts[(call.spec["name"], state.value, "0", OWNER, call.spec["job"])] += 1
            for call in list(client.in_flight.values()):
                counts[(call.spec["name"], TaskStatus.SUBMITTED_TO_WORKER.value, "0", OWNER, call.spec["job"])] += 1
        return [[*key, n] for key, n in counts.items()]


class NoTaskCounts:
    """``TaskCounts`` when metrics collection is off (``enable_metrics_collection``)."""

    def close(self) -> None:
        pass

    def changed(self) -> None:
        pass

    def actor_call_ended(self, spec: ActorCallSpec, failed: bool) -> None:
        pass

    def running(self, name: str, job: bytes, delta: int) -> None:
        pass

    def snapshot(self) -> list[list[Any]]:
        return []
