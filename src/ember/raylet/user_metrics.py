"""Application metrics reported by this node's processes, kept for the metrics port.

Each process sends batches (``ember.core.metrics_recorder``); this keeps one
series per metric, tag values and process: counters and histograms add up,
gauges keep the last value. A name defined differently by two processes
(another type, tag keys or boundaries) keeps the first definition; the
other's records are dropped and counted, never mixed in. The number of
series is bounded (``metrics_max_series``); records of new series beyond it
are dropped and counted too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ember.raylet.metric_families import COUNTER, GAUGE, HISTOGRAM, Family

logger = logging.getLogger(__name__)

#: Labels Ray puts on every application metric (after the metric's own tags).
STANDARD_LABELS = ("Component", "NodeAddress", "SessionName", "Version", "WorkerId")


@dataclass
class _Metric:
    kind: str
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...]
    #: (tag values, worker id) -> counter total / gauge value / [bucket counts, sum].
    series: dict[tuple[tuple[str, ...], bytes], Any] = field(default_factory=dict)

    def shape(self) -> tuple[Any, ...]:
        return (self.kind, self.tag_keys, self.boundaries)


class UserMetrics:
    def __init__(self, max_series: int, labels: dict[str, str]) -> None:
        self.max_series = max_series
        #: NodeAddress, SessionName and Version of this node.
        self.labels = labels
        self.metrics: dict[str, _Metric] = {}
        self.num_series = 0
        #: Records dropped: their name was defined differently elsewhere, or too many series.
        self.dropped = 0
        self._warned: set[str] = set()

    def report(self, worker_id: bytes, batch: dict[str, Any]) -> None:
        """Apply one process's batch (see ``metrics_recorder`` for its shape)."""
        refused: set[str] = set()
        for kind, name, description, tag_keys, boundaries in batch.get("defs") or ():
            if kind not in (COUNTER, GAUGE, HISTOGRAM):
                refused.add(name)
                continue
            shape = (kind, tuple(tag_keys), tuple(float(b) for b in boundaries))
            known = self.metrics.get(name)
            if known is None:
                self.metrics[name] = _Metric(kind, str(description), shape[1], shape[2])
            elif known.shape() != shape:
                refused.add(name)
                self._warn_once(name, f"metric {name!r} is defined as {known.shape()} by another process; "
                                f"records of it as {shape} from worker {worker_id.hex()[:12]} are dropped")
        for name, tags, value in batch.get("points") or ():
            metric = self.metrics.get(name)
            if name in refused or metric is None or len(tags) != len(metric.tag_keys):
                self.dropped += 1
                continue
            key = (tuple(tags), worker_id)
            current = metric.series.get(key)
            if current is None:
                if self.num_series >= self.max_series:
                    self.dropped += 1
                    self._warn_once("\0limit", f"more than {self.max_series} metric series on this node "
                                    "(metrics_max_series): records of new series are dropped")
                    continue
                self.num_series += 1
            if metric.kind == COUNTER:
                metric.series[key] = (current or 0.0) + float(value)
            elif metric.kind == GAUGE:
                metric.series[key] = float(value)
            else:
                counts, total, _count = value
                if len(counts) != len(metric.boundaries) + 1:
                    self.dropped += 1
                    continue
                if current is None:
                    metric.series[key] = [list(counts), float(total)]
                else:
                    current[0] = [a + b for a, b in zip(current[0], counts)]
                    current[1] += float(total)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s", message)

    def families(self) -> list[Family]:
        """Every metric as ``ray_<name>`` with its tags and Ray's standard labels."""
        out = []
        for name, metric in self.metrics.items():
            # A tag named like a standard label wins over it.
            extra = tuple(label for label in STANDARD_LABELS if label not in metric.tag_keys)
            fam = Family(f"ray_{name}", metric.kind, metric.description, metric.tag_keys + extra,
                         boundaries=metric.boundaries)
            for (tags, worker_id), value in metric.series.items():
                standard = {**self.labels, "Component": "core_worker", "WorkerId": worker_id.hex()}
                labels = tags + tuple(standard[label] for label in extra)
                fam.add(labels, tuple(value) if metric.kind == HISTOGRAM else value)
            out.append(fam)
        return out
