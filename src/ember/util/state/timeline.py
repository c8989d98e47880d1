"""``ember.timeline()``: task executions as a Chrome trace (``chrome://tracing``, Perfetto).

One ``ph: "X"`` event per execution, one process row per node and one thread row per
worker (its pid), from the task events the control service keeps.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ember.util.state.sources import StateSource


async def executions(src: StateSource, since: float = 0.0, job_id: str | None = None) -> list[dict[str, Any]]:
    """Recorded executions as dicts (``node_id``, ``node_ip``, ``pid``, ``name``, ``start``, ``end``, ...)."""
    payload: dict[str, Any] = {"since": since}
    if job_id:
        payload["job_id"] = bytes.fromhex(job_id)
    rows = await src.gcs("task_executions", payload)
    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in await src.gcs("get_nodes", None)}
    out = []
    for task_id, name, job, node, worker, pid, start, end, state in rows:
        node_hex = node.hex() if node else ""
        out.append({"task_id": task_id.hex(), "name": name, "job_id": job.hex(), "node_id": node_hex,
                    "node_ip": ips.get(node_hex, ""), "worker_id": worker.hex() if worker else "", "pid": pid,
                    "start": start, "end": end, "state": state})
    return out


def chrome_trace(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    named: set[str] = set()
    now = time.time()
    for e in sorted(rows, key=lambda r: r["start"]):
        process = f"Node {e.get('node_ip') or e['node_id'][:8]}"
        if process not in named:
            named.add(process)
            events.append({"name": "process_name", "ph": "M", "pid": process,
                           "args": {"name": f"{process} {e['node_id'][:12]}"}})
        end = e["end"] if e["end"] is not None else now
        events.append({
            "cat": "task", "name": e["name"], "ph": "X", "pid": process, "tid": f"worker pid {e['pid']}",
            "ts": e["start"] * 1e6, "dur": max(0.0, end - e["start"]) * 1e6,
            "cname": "terrible" if e["state"] == "FAILED" else "generic_work",
            "args": {"task_id": e.get("task_id", ""), "state": e["state"], "job_id": e.get("job_id", ""),
                     "worker_id": e.get("worker_id", "")},
        })
    return events


def timeline(filename: str | None = None, address: str | None = None) -> list[dict[str, Any]] | None:
    """Write the cluster's task executions to ``filename`` as a Chrome trace, or return the events."""
    from ember.util.state.api import run_query

    events = chrome_trace(run_query(address, 30.0, lambda src: executions(src)))
    if filename is None:
        return events
    with open(filename, "w") as f:
        json.dump(events, f)
    return None
