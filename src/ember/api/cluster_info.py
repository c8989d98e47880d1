"""``nodes()``, ``cluster_resources()``, ``available_resources()``."""

from __future__ import annotations

from typing import Any

from ember._private import runtime


def nodes() -> list[dict[str, Any]]:
    """Every node the cluster has known, alive or dead."""
    rows: list[dict[str, Any]] = runtime.core_worker().gcs_call("get_nodes", None)
    return rows


def _sum(field: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for node in nodes():
        if not node["Alive"]:
            continue
        for name, value in node[field].items():
            total[name] = total.get(name, 0.0) + value
    return {k: v for k, v in total.items() if v > 0}


def cluster_resources() -> dict[str, float]:
    """Total resources of the live nodes."""
    return _sum("Resources")


def available_resources() -> dict[str, float]:
    """Resources not in use right now (as of the nodes' latest reports, sent within
    ``resource_report_min_interval_s`` of a change).

    Every resource the live nodes have is listed, at 0 when all of it is in use
    (Ray leaves such a resource out; code that indexes ``["CPU"]`` then fails
    exactly when the cluster is busy).
    """
    total: dict[str, float] = {}
    for node in nodes():
        if not node["Alive"]:
            continue
        for name in node["Resources"]:
            total.setdefault(name, 0.0)
        for name, value in node["AvailableResources"].items():
            total[name] = total.get(name, 0.0) + max(value, 0.0)
    return total
