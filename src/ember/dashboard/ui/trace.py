"""Task executions as a Chrome trace (``chrome://tracing``, Perfetto): one ``ph: "X"`` event
per execution, one process row per node and one thread row per worker pid."""

from __future__ import annotations

import time
from typing import Any


def chrome_trace(executions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    named_nodes: set[str] = set()
    now = time.time()
    for e in executions:
        node = e["node_id"]
        if node not in named_nodes:
            named_nodes.add(node)
            events.append({"name": "process_name", "ph": "M", "pid": f"Node {e.get('node_ip') or node[:8]}",
                           "args": {"name": f"Node {e.get('node_ip') or ''} {node[:12]}"}})
        end = e["end"] if e["end"] is not None else now
        events.append({
            "cat": "task", "name": e["name"], "ph": "X",
            "pid": f"Node {e.get('node_ip') or node[:8]}", "tid": f"worker pid {e['pid']}",
            "ts": e["start"] * 1e6, "dur": max(0.0, end - e["start"]) * 1e6,
            "cname": "terrible" if e["state"] == "FAILED" else "generic_work",
            "args": {"task_id": e.get("task_id", ""), "state": e["state"], "job_id": e.get("job_id", "")},
        })
    return events
