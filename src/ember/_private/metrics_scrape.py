"""Reading a node's metrics port as Python values (the dashboard, tests, tools).

``scrape("127.0.0.1:8080")`` returns every sample as a ``Sample`` (name,
labels, value); ``scrape_cluster(nodes)`` does it for every live node of
``ember.nodes()``. The text is parsed with ``prometheus_client``'s parser, so
what is read here is exactly what Prometheus reads.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from typing import Any, NamedTuple


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def scrape(address: str, timeout: float = 5.0) -> list[Sample]:
    """Every sample served at ``http://<address>/metrics`` now."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
        return parse(response.read().decode("utf-8"))


def scrape_cluster(nodes: Iterable[dict[str, Any]], timeout: float = 5.0) -> dict[str, list[Sample]]:
    """Samples of every live node (``ember.nodes()`` rows), by node id; unreachable nodes are left out."""
    out: dict[str, list[Sample]] = {}
    for node in nodes:
        if not node.get("Alive") or not node.get("MetricsExportPort"):
            continue
        try:
            out[node["NodeID"]] = scrape(f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}", timeout)
        except OSError:
            continue
    return out


def select(samples: Iterable[Sample], name: str, **labels: str) -> list[Sample]:
    """The samples named ``name`` whose labels include ``labels``."""
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
