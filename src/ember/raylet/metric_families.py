"""Metric families in one neutral shape, and their Prometheus text (via ``prometheus_client``).

Families are built by the node daemon (its own system metrics, and what its
processes reported); ``render`` turns them into the exposition format the
scraper asked for. ``prometheus_client`` is imported at the first scrape, so
a node nobody scrapes never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"


@dataclass
class Family:
    """One metric: its samples are (label values in ``label_names`` order, value).

    A histogram's value is ``(bucket_counts, sum)`` with one count per boundary
    plus the unbounded bucket, not cumulative.
    """

    name: str
    kind: str
    help: str
    label_names: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], Any]] = field(default_factory=list)
    boundaries: tuple[float, ...] = ()

    def add(self, labels: tuple[str, ...], value: Any) -> None:
        self.samples.append((labels, value))


def gauge(name: str, help: str, label_names: tuple[str, ...], samples: list[tuple[tuple[str, ...], float]]) -> Family:
    return Family(name, GAUGE, help, label_names, samples)


class _Collector:
    """Hands prometheus_client the families of one scrape."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Any:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for fam in self.families:
            labels = list(fam.label_names)
            if fam.kind == COUNTER:
                metric: Any = CounterMetricFamily(fam.name, fam.help, labels=labels)
                for values, value in fam.samples:
                    metric.add_metric(list(values), value)
            elif fam.kind == GAUGE:
                metric = GaugeMetricFamily(fam.name, fam.help, labels=labels)
                for values, value in fam.samples:
                    metric.add_metric(list(values), value)
            else:
                metric = HistogramMetricFamily(fam.name, fam.help, labels=labels)
                bounds = [repr(float(b)) for b in fam.boundaries] + ["+Inf"]
                for values, (counts, total) in fam.samples:
                    cumulative, running = [], 0
                    for bound, count in zip(bounds, counts):
                        running += count
                        cumulative.append((bound, running))
                    metric.add_metric(list(values), cumulative, total)
            yield metric


def render(families: list[Family], accept: str = "") -> tuple[bytes, str]:
    """The exposition of ``families`` in the format ``accept`` prefers, and its content type."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(families))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
