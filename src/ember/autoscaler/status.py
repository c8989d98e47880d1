"""The cluster's status as Ray shows it: the ``/api/cluster_status`` document and ``ray status`` text.

``status_document(nodes, demand, autoscaler)`` builds Ray's autoscaler status document
(camelCase, as Ray's REST layer returns it) from the control service's ``get_nodes``,
``get_cluster_demand`` and ``get_autoscaler_status`` replies; Ember adds the
autoscaler's infeasible and waiting demands and its recent events. ``format_status``
prints it as ``ray status`` does, plus those sections.
"""

from __future__ import annotations

import time
from typing import Any

#: Death reason of a node stopped on purpose (not a failure).
_STOPPED = "its node daemon was stopped"
_MAX_EVENTS_SHOWN = 10


def _shape(amounts: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(amounts.items())}


def status_document(nodes: list[dict[str, Any]], demand: dict[str, Any] | None = None,
                    autoscaler: dict[str, Any] | None = None) -> dict[str, Any]:
    alive = [n for n in nodes if n["Alive"]]
    usage: dict[str, list[float]] = {}
    by_node: dict[str, dict[str, list[float]]] = {}
    for node in alive:
        mine: dict[str, list[float]] = {}
        for name, total in node["Resources"].items():
            if name.startswith("node:") or "_group_" in name:
                continue
            used = total - node["AvailableResources"].get(name, 0.0)
            mine[name] = [used, total]
            agg = usage.setdefault(name, [0.0, 0.0])
            agg[0] += used
            agg[1] += total
        by_node[node["NodeID"]] = mine
    demand = demand or {}
    idle_s = {n["NodeID"]: n.get("IdleSeconds", 0.0) for n in demand.get("nodes", [])}
    type_of: dict[str, str] = {}
    if autoscaler:
        for node_type, ids in autoscaler.get("active", {}).items():
            for node_id in ids:
                type_of[node_id] = node_type
    head_type = (autoscaler or {}).get("head_node_type") or "head"
    active: dict[str, int] = {}
    idle: dict[str, int] = {}
    for node in alive:
        kind = type_of.get(node["NodeID"]) or (head_type if autoscaler and node.get("IsHead") else "node")
        table = idle if autoscaler and idle_s.get(node["NodeID"], 0.0) >= 1.0 else active
        table[kind] = table.get(kind, 0) + 1
    failed = [{"nodeId": n["NodeID"], "ip": n["NodeManagerAddress"], "reason": n.get("DeathReason", "")}
              for n in nodes if not n["Alive"] and n.get("DeathReason") != _STOPPED]
    report = autoscaler or {}
    pending_launches: dict[str, int] = {}
    pending_nodes = []
    for entry in report.get("pending", []):
        if entry.get("provider_id"):
            pending_nodes.append([entry["provider_id"], entry["node_type"], entry["status"]])
        else:
            pending_launches[entry["node_type"]] = pending_launches.get(entry["node_type"], 0) + entry.get("count", 1)
    shapes = [[_shape(s), c] for s, c in demand.get("tasks", []) + demand.get("actors", [])]
    groups = [{"strategy": g["strategy"], "bundles": _count_bundles(g["bundles"])} for g in demand.get("placement_groups", [])]
    requested = _count_bundles(demand.get("requested", []))
    return {
        "time": time.time(),
        "loadMetricsReport": {
            "usage": usage, "usageByNode": by_node,
            "resourceDemand": shapes,
            "pgDemand": [[g, 1] for g in groups],
            "requestDemand": requested,
            "nodeTypes": [[name, t.get("resources", {})] for name, t in report.get("node_types", {}).items()],
        },
        "autoscalerReport": {
            "activeNodes": active, "idleNodes": idle,
            "pendingLaunches": pending_launches, "pendingNodes": pending_nodes,
            "failedNodes": failed,
            "launchFailures": report.get("failed", []),
            "legacy": False,
        },
        "autoscaler": {
            "running": bool(autoscaler) and not report.get("stopped"),
            "restarting": bool(report.get("restarting")),
            "clusterName": report.get("cluster_name"),
            "infeasible": report.get("infeasible", []),
            "waiting": report.get("waiting", []),
            "kept": report.get("kept", []),
            "events": report.get("events", []),
        } if autoscaler else None,
    }


def _count_bundles(bundles: list[dict[str, float]]) -> list[list[Any]]:
    counts: dict[str, list[Any]] = {}
    for bundle in bundles:
        shape = _shape(bundle)
        row = counts.setdefault(repr(shape), [shape, 0])
        row[1] += 1
    return list(counts.values())


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def format_status(status: dict[str, Any]) -> str:
    """The text ``ray status`` prints for ``status`` (plus the autoscaler's verdicts and events)."""
    report = status["autoscalerReport"]
    load = status["loadMetricsReport"]
    header = "======== Autoscaler status: " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["time"])) + " ========"
    rule = "-" * len(header)
    lines = [header, "Node status", rule, "Active:"]
    lines += [f" {count} {kind}" for kind, count in report["activeNodes"].items()] or [" (no active nodes)"]
    lines += ["Idle:"]
    lines += [f" {count} {kind}" for kind, count in report.get("idleNodes", {}).items()] or [" (no idle nodes)"]
    lines += ["Pending:"]
    pending = [f" {kind}, {count} launching" for kind, count in report.get("pendingLaunches", {}).items()]
    pending += [f" {pid}: {kind}, {state.lower()}" for pid, kind, state in report.get("pendingNodes", [])]
    lines += pending or [" (no pending nodes)"]
    lines += ["Recent failures:"]
    failures = [f" {f['ip']}: {f['reason']} ({f['nodeId'][:12]})" for f in report["failedNodes"]]
    failures += [f" {f['node_type']}: LaunchFailed (latest_attempt: {_clock(f['time'])}) - {f['reason']}"
                 for f in report.get("launchFailures", [])[-5:]]
    lines += failures or [" (no failures)"]
    lines += ["", "Resources", rule, "Total Usage:"]
    for name, (used, total) in sorted(load["usage"].items()):
        if name in ("memory", "object_store_memory"):
            lines.append(f" {used / 2**30:.2f}GiB/{total / 2**30:.2f}GiB {name}")
        else:
            lines.append(f" {used:g}/{total:g} {name}")
    lines += ["From request_resources:"]
    lines += [f" {shape}: {count} from request_resources()" for shape, count in load.get("requestDemand", [])] or [
        " (none)"]
    lines += ["Pending Demands:"]
    demands = [f" {shape}: {count}+ pending tasks/actors" for shape, count in load.get("resourceDemand", [])]
    for group, count in load.get("pgDemand", []):
        bundles = ", ".join(f"{b} * {n}" for b, n in group["bundles"])
        demands.append(f" {bundles} ({group['strategy']}): {count}+ pending placement groups")
    lines += demands or [" (no resource demands)"]
    scaler = status.get("autoscaler")
    if scaler:
        if scaler.get("restarting"):
            lines += ["", "Autoscaler: RESTARTING after it died (its last report is shown)"]
        elif not scaler["running"]:
            lines += ["", "Autoscaler: NOT RUNNING (its last report is shown)"]
        if scaler["infeasible"]:
            lines += ["", "Infeasible (no node type can ever run these; they wait until the cluster changes):"]
            lines += [f" {what}: {why}" for what, why in scaler["infeasible"]]
        if scaler["waiting"]:
            lines += ["", "Waiting for a limit:"]
            lines += [f" {what}: {why}" for what, why in scaler["waiting"]]
        if scaler.get("kept"):
            lines += ["", "Idle nodes kept past the idle timeout:"]
            lines += [f" {node_id[:12]} ({node_type}): {why}" for node_id, node_type, why in scaler["kept"]]
        events = [e for e in scaler["events"] if e["kind"] != "started"][-_MAX_EVENTS_SHOWN:]
        lines += ["", "Recent autoscaler events:"]
        lines += [f" {_clock(e['time'])} {e['kind']}: {e['message']}" for e in events] or [" (none)"]
    return "\n".join(lines)
