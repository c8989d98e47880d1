"""This process's application metrics, aggregated and sent to the node daemon in batches.

A record (``Counter.inc``, ``Gauge.set``, ``Histogram.observe``) only updates a
dict under a lock: counters add up, gauges keep the last value, histograms
count buckets. The first record after a flush arms one timer on the core
worker's event loop; ``metrics_report_period_s`` later the loop sends what
accumulated as one ``report_metrics`` notification to the node daemon
(``ember.raylet.metrics_service``). A process that records nothing never
imports this module or arms a timer. Records made before ``ember.init()``
wait here and go with the first batch after it; ``shutdown`` sends the last
batch.

Message shape (msgpack)::

    {"worker_id": bytes, "defs": [[kind, name, description, tag_keys, boundaries], ...],
     "points": [[name, tag_values, value], ...],
     "tasks": [[name, state, is_retry, source, job_id, count], ...]}   # only when they changed

where a counter's value is the increase since the last batch, a gauge's is its
last value and a histogram's is ``[bucket_counts, sum, count]`` since the last
batch (``len(boundaries) + 1`` buckets, the last one unbounded).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Any

from ember._private import runtime
from ember._private.config import config

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"
KINDS = (COUNTER, GAUGE, HISTOGRAM)


@dataclass(frozen=True)
class MetricDefinition:
    kind: str
    name: str
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    def same_shape(self, other: MetricDefinition) -> bool:
        """Whether records of both can share one series (the description may differ)."""
        return (self.kind, self.tag_keys, self.boundaries) == (other.kind, other.tag_keys, other.boundaries)

    def describe(self) -> str:
        extra = f", boundaries {list(self.boundaries)}" if self.boundaries else ""
        return f"{self.kind} with tag_keys {self.tag_keys}{extra}"

    def to_wire(self) -> list[Any]:
        return [self.kind, self.name, self.description, list(self.tag_keys), list(self.boundaries)]


class MetricsRecorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.definitions: dict[str, MetricDefinition] = {}
        #: (name, tag values) -> counter increase / gauge value / [buckets, sum, count].
        self._pending: dict[tuple[str, tuple[str, ...]], Any] = {}
        #: The core worker whose loop has a flush timer armed (None: none). A timer lost with
        #: its loop (a worker shut down) does not count: the next record arms one on the new loop.
        self._armed_for: Any = None
        self._timer: Any = None
        #: The process's task counts changed since the last batch.
        self._tasks_changed = False

    def define(self, definition: MetricDefinition) -> MetricDefinition:
        """Register a metric and return its definition in this process (the first one given).

        The same name again must have the same type, tag keys and boundaries.
        """
        with self._lock:
            known = self.definitions.get(definition.name)
            if known is None:
                self.definitions[definition.name] = definition
                return definition
            if not known.same_shape(definition):
                raise ValueError(
                    f"Metric {definition.name!r} is already defined in this process as a "
                    f"{known.describe()}; cannot define it again as a {definition.describe()}."
                )
            return known

    def record(self, definition: MetricDefinition, tags: tuple[str, ...], value: float) -> None:
        if not config().enable_metrics_collection:
            return
        key = (definition.name, tags)
        with self._lock:
            if definition.kind == COUNTER:
                self._pending[key] = self._pending.get(key, 0.0) + value
            elif definition.kind == GAUGE:
                self._pending[key] = value
            else:
                entry = self._pending.get(key)
                if entry is None:
                    entry = self._pending[key] = [[0] * (len(definition.boundaries) + 1), 0.0, 0]
                # Prometheus buckets are "less than or equal": a value on a boundary counts in it.
                entry[0][bisect.bisect_left(definition.boundaries, value)] += 1
                entry[1] += value
                entry[2] += 1
        if self._armed_for is None or self._armed_for is not runtime.core_worker_or_none():
            self._arm_soon()

    def poke(self) -> None:
        """The task counts changed: send them with the next batch (hot path: usually two reads)."""
        self._tasks_changed = True
        if self._armed_for is None or self._armed_for is not runtime.core_worker_or_none():
            self._arm_soon()

    def kick(self) -> None:
        """Arm the timer for records made before this process had a core worker."""
        if self._pending:
            self._arm_soon()

    def _arm_soon(self) -> None:
        """Arm a flush timer on the current core worker's loop (none yet: ``kick`` does it later)."""
        with self._lock:
            worker = runtime.core_worker_or_none()
            if worker is None or worker.loop is None or self._armed_for is worker:
                return
            self._armed_for = worker
        try:
            worker.loop.call_soon_threadsafe(self._arm, worker)
        except RuntimeError:  # its loop closed meanwhile: shutting down
            with self._lock:
                if self._armed_for is worker:
                    self._armed_for = None

    def _arm(self, worker: Any) -> None:
        self._timer = worker.loop.call_later(config().metrics_report_period_s, self.flush, worker)

    def take_batch(self, task_counts: Any = None) -> dict[str, Any] | None:
        """What accumulated since the last batch, as the message to send (None if nothing).

        ``task_counts`` (the core worker's ``TaskCounts``) adds the task counts if they changed.
        """
        with self._lock:
            pending, self._pending = self._pending, {}
            tasks_changed, self._tasks_changed = self._tasks_changed, False
            self._armed_for = None
            names = {name for name, _ in pending}
            defs = [self.definitions[name].to_wire() for name in names]
        batch: dict[str, Any] = {}
        if pending:
            batch["defs"] = defs
            batch["points"] = [[name, list(tags), value] for (name, tags), value in pending.items()]
        if tasks_changed and task_counts is not None:
            batch["tasks"] = task_counts.snapshot()
        return batch or None

    def flush(self, worker: Any) -> None:
        """Send the batch to the node daemon (on the core worker's loop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self.take_batch(getattr(worker, "task_counts", None))
        conn = worker.raylet
        if batch is None or conn is None or conn.closed:
            return  # the node daemon is gone: so is the exporter these records were for
        batch["worker_id"] = worker.worker_id
        conn.notify("report_metrics", batch)


_recorder: MetricsRecorder | None = None
_recorder_lock = threading.Lock()


def get_recorder() -> MetricsRecorder:
    global _recorder
    if _recorder is None:
        with _recorder_lock:
            if _recorder is None:
                _recorder = MetricsRecorder()
    return _recorder


def flush_if_used(worker: Any) -> None:
    """Send what this process recorded now (shutdown, actor exit); on the core worker's loop."""
    if _recorder is not None:
        _recorder.flush(worker)


def kick_if_used() -> None:
    """Called once a driver's core worker runs: send records made before ``init``."""
    if _recorder is not None:
        _recorder.kick()
