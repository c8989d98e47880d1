"""Where the state API's rows come from: one async function per resource, shared by
``ember.util.state`` (drivers, the CLI) and the head's HTTP routes (``/api/v0/...``).

Everything is read from the control service (task events, actors, nodes, jobs, placement
groups), except workers and objects, which each node daemon / core worker knows. The
result is Ray's list response: ``{"result": [rows], "total": rows matching the filters,
"num_after_truncation": rows returned, "num_filtered", "dropped": task events lost to
retention, "partial_failure_warning"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ember._private import state_filters
from ember.util.state.common import RESOURCES

GcsCall = Callable[[str, Any], Awaitable[Any]]


@dataclass
class StateSource:
    """How to reach the cluster: a control-service call, plus address and token for node daemons."""

    gcs: GcsCall
    gcs_address: str
    token: str
    timeout: float = 30.0


def _hex(value: Any) -> Any:
    return value.hex() if isinstance(value, (bytes, bytearray)) else value


async def list_resource(src: StateSource, resource: str, filters: Any = None, limit: int = 100,
                        detail: bool = False) -> dict[str, Any]:
    """Rows of ``resource`` matching ``filters``, at most ``limit``; ValueError for bad arguments."""
    if resource not in RESOURCES:
        raise ValueError(f"unknown resource {resource!r}; one of {', '.join(RESOURCES)}")
    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    fields = RESOURCES[resource].field_names()
    checked = state_filters.check_filters(filters, fields)
    if resource == "tasks":
        reply: dict[str, Any] = await src.gcs(
            "list_tasks", {"filters": [list(f) for f in checked], "limit": limit, "detail": detail})
        return reply
    rows, warning = await _ROWS[resource](src)
    detail_only = set(fields) - set(_SUMMARY_FIELDS.get(resource, fields))
    if not detail:
        rows = [{k: (None if k in detail_only else v) for k, v in r.items()} for r in rows]
    out, total = state_filters.apply(rows, checked, limit)
    return {"result": out, "total": total, "num_after_truncation": len(out), "num_filtered": total,
            "dropped": 0, "partial_failure_warning": warning}


async def _actors(src: StateSource) -> tuple[list[dict[str, Any]], str | None]:
    rows = []
    for a in await src.gcs("list_actors", None):
        rows.append({
            "actor_id": _hex(a["actor_id"]), "class_name": a.get("class_name", ""), "state": a["state"],
            "job_id": _hex(a.get("job_id")) or "", "name": a.get("name") or "", "node_id": _hex(a.get("node_id")),
            "pid": a.get("pid"), "ray_namespace": a.get("namespace"),
            "serialized_runtime_env": None, "required_resources": None,
            "death_cause": {"message": a["death_cause"], "error_type": a.get("error_type")} if a.get("death_cause") else None,
            "is_detached": bool(a.get("detached")), "placement_group_id": None, "repr_name": "",
            "num_restarts": a.get("num_restarts", 0), "num_restarts_due_to_lineage_reconstruction": 0,
            "num_restarts_due_to_node_preemption": 0, "call_site": None, "label_selector": None,
        })
    return rows, None


async def _nodes(src: StateSource) -> tuple[list[dict[str, Any]], str | None]:
    rows = []
    for n in await src.gcs("get_nodes", None):
        rows.append({
            "node_id": n["NodeID"], "node_ip": n["NodeManagerAddress"], "is_head_node": bool(n.get("IsHead")),
            "state": "ALIVE" if n["Alive"] else "DEAD", "state_message": n.get("DeathReason") or None,
            "node_name": n.get("NodeManagerHostname") or n["NodeManagerAddress"],
            "resources_total": dict(n.get("Resources") or {}), "labels": dict(n.get("Labels") or {}),
            "start_time_ms": None, "end_time_ms": None,
        })
    return rows, None


async def _jobs(src: StateSource) -> tuple[list[dict[str, Any]], str | None]:
    rows = []
    for j in await src.gcs("get_jobs", None):
        start, end = j.get("start_time"), j.get("end_time")
        rows.append({
            "job_id": _hex(j["job_id"]), "submission_id": j.get("submission_id"),
            "type": "SUBMISSION" if j.get("submission_id") else "DRIVER", "status": j["status"],
            "entrypoint": j.get("entrypoint", ""), "message": None, "error_type": None,
            "start_time": int(start * 1000) if start else None, "end_time": int(end * 1000) if end else None,
            "metadata": {}, "runtime_env": None,
            "driver_info": {"id": _hex(j["job_id"]), "pid": str(j.get("driver_pid") or ""),
                            "node_ip_address": (j.get("driver_address") or [""])[0]},
            "driver_agent_http_address": None, "driver_node_id": None, "driver_exit_code": None,
        })
    return rows, None


async def _placement_groups(src: StateSource) -> tuple[list[dict[str, Any]], str | None]:
    rows = []
    for pg_id, g in (await src.gcs("placement_group_table", None)).items():
        nodes = {int(k): v for k, v in (g.get("bundles_to_node_id") or {}).items()}
        bundles = [{"bundle_id": i, "node_id": nodes.get(int(i)), "unit_resources": dict(b)}
                   for i, b in sorted((int(k), v) for k, v in (g.get("bundles") or {}).items())]
        rows.append({
            "placement_group_id": pg_id, "name": g.get("name") or "", "creator_job_id": _hex(g.get("creator_job_id")),
            "state": g["state"], "bundles": bundles, "is_detached": g.get("is_detached"),
            "stats": g.get("stats"), "topology_strategy": g.get("strategy"),
        })
    return rows, None


async def _per_node(src: StateSource, ask: Callable[[Any, dict[str, Any]], Awaitable[list[dict[str, Any]]]]) -> tuple[list[dict[str, Any]], str | None]:
    """Rows from every live node daemon; a node that does not answer is named in the warning."""
    from ember.exceptions import RpcError
    from ember.rpc import connect

    nodes = [n for n in await src.gcs("get_nodes", None) if n["Alive"]]

    async def one(node: dict[str, Any]) -> list[dict[str, Any]]:
        conn = await connect(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}", src.token,
                             timeout=min(src.timeout, 5.0))
        try:
            return await ask(conn, node)
        finally:
            conn.close()

    answers = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
    rows: list[dict[str, Any]] = []
    failed = []
    for node, answer in zip(nodes, answers):
        if isinstance(answer, (RpcError, OSError)):
            failed.append(f"{node['NodeID'][:12]} ({answer})")
        elif isinstance(answer, BaseException):
            raise answer
        else:
            rows += answer
    warning = f"no answer from node(s) {', '.join(failed)}" if failed else None
    return rows, warning


async def _workers(src: StateSource) -> tuple[list[dict[str, Any]], str | None]:
    async def ask(conn: Any, node: dict[str, Any]) -> list[dict[str, Any]]:
        info = await conn.call("get_info", None, src.timeout)
        return [{
            "worker_id": _hex(w["worker_id"]), "is_alive": True, "worker_type": "WORKER", "exit_type": None,
            "node_id": node["NodeID"], "ip": node["NodeManagerAddress"], "pid": w["pid"],
            "exit_detail": None, "worker_launch_time_ms": None, "worker_launched_time_ms": None,
            "start_time_ms": None, "end_time_ms": None,
        } for w in info.get("workers", [])]

    return await _per_node(src, ask)


async def _objects(src: StateSource) -> tuple[list[dict[str, Any]], str | None]:
    from ember.cli.memory_report import _collect

    _nodes_seen, tables = await _collect(src.gcs_address, src.token, min(src.timeout, 5.0))
    rows = []
    for table in tables:
        for r in table["objects"]:
            rows.append({
                "object_id": r["object_id"], "object_size": r["size"], "task_status": r.get("task_status", ""),
                "attempt_number": 0, "reference_type": r["reference_type"], "call_site": r.get("call_site", ""),
                "type": table["mode"].upper(), "pid": table["pid"], "ip": table["ip"],
            })
    return rows, None


_ROWS: dict[str, Callable[[StateSource], Awaitable[tuple[list[dict[str, Any]], str | None]]]] = {
    "actors": _actors, "nodes": _nodes, "jobs": _jobs, "placement_groups": _placement_groups,
    "workers": _workers, "objects": _objects,
}

#: Fields shown without ``detail`` (the others are detail-only), as in Ray.
_SUMMARY_FIELDS = {
    "actors": ["actor_id", "class_name", "state", "job_id", "name", "node_id", "pid", "ray_namespace"],
    "nodes": ["node_id", "node_ip", "is_head_node", "state", "state_message", "node_name", "resources_total", "labels"],
    "placement_groups": ["placement_group_id", "name", "creator_job_id", "state"],
    "workers": ["worker_id", "is_alive", "worker_type", "exit_type", "node_id", "ip", "pid"],
}


# ============================================================================ summaries
async def summarize(src: StateSource, resource: str) -> dict[str, Any]:
    """Ray's summary documents: ``{"cluster": {...}}`` for tasks, actors and objects."""
    if resource == "tasks":
        summary = await src.gcs("summarize_tasks", None)
        return {"cluster": summary}
    if resource == "actors":
        listed = await list_resource(src, "actors", limit=10**9)
        by_class: dict[str, dict[str, Any]] = {}
        for a in listed["result"]:
            row = by_class.setdefault(a["class_name"], {"class_name": a["class_name"], "state_counts": {}})
            row["state_counts"][a["state"]] = row["state_counts"].get(a["state"], 0) + 1
        return {"cluster": {"summary": by_class, "total_actors": listed["total"], "summary_by": "class"}}
    if resource == "objects":
        listed = await list_resource(src, "objects", limit=10**9)
        by_site: dict[str, dict[str, Any]] = {}
        total_size = 0
        for o in listed["result"]:
            site = o["call_site"] or "disabled"
            row = by_site.setdefault(site, {"total_objects": 0, "total_size_mb": 0.0, "total_num_workers": 0,
                                            "total_num_nodes": 0, "task_state_counts": {}, "ref_type_counts": {},
                                            "_pids": set(), "_ips": set()})
            row["total_objects"] += 1
            row["total_size_mb"] += o["object_size"] / 2**20
            row["_pids"].add(o["pid"])
            row["_ips"].add(o["ip"])
            row["ref_type_counts"][o["reference_type"]] = row["ref_type_counts"].get(o["reference_type"], 0) + 1
            total_size += o["object_size"]
        for row in by_site.values():
            row["total_num_workers"], row["total_num_nodes"] = len(row.pop("_pids")), len(row.pop("_ips"))
        return {"cluster": {"summary": by_site, "total_objects": listed["total"],
                            "total_size_mb": total_size / 2**20, "callsite_enabled": False, "summary_by": "callsite"}}
    raise ValueError(f"cannot summarize {resource!r}; one of tasks, actors, objects")
