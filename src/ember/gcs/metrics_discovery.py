"""Prometheus file service discovery: every live node's metrics port, in the session folder.

The control service rewrites ``<session>/prom_metrics_service_discovery.json``
(Ray's name and shape: ``[{"labels": {"job": "ray"}, "targets": ["ip:port", ...]}]``)
whenever a node joins or dies, atomically, so Prometheus (``file_sd_configs``)
always reads a whole list. It also writes ``metrics/prometheus/prometheus.yml``
once, a ready configuration pointing at that list, as Ray does::

    prometheus --config.file=<session>/metrics/prometheus/prometheus.yml
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

DISCOVERY_FILE = "prom_metrics_service_discovery.json"

_PROMETHEUS_YML = """\
# Written by Ember: scrapes every node of this cluster (the list follows joins and deaths).
global:
  scrape_interval: 10s
  evaluation_interval: 10s

scrape_configs:
- job_name: 'ray'
  file_sd_configs:
  - files:
    - '{discovery}'
"""


def targets(nodes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The discovery list for these node records (``to_public`` rows); dead nodes are left out."""
    addresses = [
        f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}"
        for n in nodes if n.get("Alive") and n.get("MetricsExportPort")
    ]
    return [{"labels": {"job": "ray"}, "targets": addresses}]


def write_discovery(session_dir: str, nodes: Iterable[Mapping[str, Any]]) -> None:
    path = os.path.join(session_dir, DISCOVERY_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(targets(nodes), f)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot write the Prometheus discovery file %s: %s", path, exc)


def write_prometheus_config(session_dir: str) -> None:
    folder = os.path.join(session_dir, "metrics", "prometheus")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "prometheus.yml"), "w") as f:
            f.write(_PROMETHEUS_YML.format(discovery=os.path.join(session_dir, DISCOVERY_FILE)))
    except OSError as exc:
        logger.warning("cannot write the Prometheus configuration in %s: %s", folder, exc)
