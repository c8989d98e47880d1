"""The document each view polls, built from the cluster source, the task source and the logs.

One method per view; each returns plain JSON-able data shaped for its page. Lists that
could grow without bound (jobs, failed tasks, actor calls) return the newest
``rows`` entries *and* the exact total, so a page says "showing 200 of 12,345" instead
of silently cutting.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from ember.dashboard.ui.cluster_source import ClusterSource
from ember.dashboard.ui.history import ClusterHistory
from ember.dashboard.ui.jobs_source import JobsSource, job_row_from_details, job_row_from_driver
from ember.dashboard.ui.log_files import LogFiles
from ember.dashboard.ui.task_counts import TaskCounts


class TaskEvents(Protocol):
    """What the pages need to know about single tasks (from the task events)."""

    async def failed_tasks(self, job_id: str, limit: int) -> tuple[int, list[dict[str, Any]]]: ...
    async def actor_calls(self, actor_id: str, limit: int) -> tuple[dict[str, int], int, list[dict[str, Any]]]: ...
    async def executions(self, since: float) -> list[dict[str, Any]]: ...
    async def running_by_worker(self) -> dict[str, str]: ...


class Documents:
    def __init__(self, cluster: ClusterSource, logs: LogFiles, counts: TaskCounts, tasks: TaskEvents | None,
                 history: ClusterHistory, rows: int, jobs_source: JobsSource | None = None) -> None:
        self.cluster = cluster
        self.counts = counts
        self.logs = logs
        self.tasks = tasks
        self.history = history
        self.rows = rows
        self.jobs_source = jobs_source

    # ------------------------------------------------------------------ shared
    async def _task_counts(self, job_id: str | None = None) -> dict[str, int]:
        return await self.counts.state_counts(job_id)

    async def history_sample(self) -> dict[str, float]:
        nodes = await self.cluster.nodes()
        infos = await self.cluster.node_infos(nodes)
        self.logs.learn_owners(infos)
        alive = [n for n in nodes if n.get("Alive")]
        cpu_total = sum(n["Resources"].get("CPU", 0) for n in alive)
        cpu_free = sum(n["AvailableResources"].get("CPU", 0) for n in alive)
        memory = _host_memory(alive, infos)
        tasks = await self._task_counts()
        return {
            "cpu_used": cpu_total - cpu_free, "cpu_total": cpu_total,
            "mem_used": memory["used"], "mem_total": memory["total"],
            "store_used": sum(n.get("ObjectStoreUsed", 0) for n in alive),
            "store_total": sum(n.get("ObjectStoreCapacity", 0) for n in alive),
            "running": tasks["RUNNING"], "pending": tasks["PENDING"],
            "finished": tasks["FINISHED"], "failed": tasks["FAILED"],
        }

    # ---------------------------------------------------------------- overview
    async def overview(self) -> dict[str, Any]:
        nodes = await self.cluster.nodes()
        # Asked at once: each is a round trip to another process.
        infos, actors, jobs, tasks = await asyncio.gather(
            self.cluster.node_infos(nodes), self.cluster.actors(), self._job_rows(), self._task_counts())
        alive = [n for n in nodes if n.get("Alive")]
        resources: dict[str, dict[str, float]] = {}
        for n in alive:
            for name, total in n["Resources"].items():
                if _is_internal_resource(name):
                    continue
                r = resources.setdefault(name, {"total": 0.0, "used": 0.0})
                r["total"] += total
                r["used"] += total - n["AvailableResources"].get(name, total)
        ordered = {k: resources[k] for k in sorted(resources, key=_resource_order)}
        return {
            "nodes": {"alive": len(alive), "dead": len(nodes) - len(alive)},
            "resources": ordered,
            "object_store": {
                "used": sum(n.get("ObjectStoreUsed", 0) for n in alive),
                "capacity": sum(n.get("ObjectStoreCapacity", 0) for n in alive),
                "spilled": sum(n.get("ObjectStoreSpilled", 0) for n in alive),
                "objects": sum(n.get("ObjectStoreObjects", 0) for n in alive),
            },
            "host_memory": _host_memory(alive, infos),
            "tasks": tasks,
            "tasks_recorded": self.tasks is not None,
            "actors_alive": sum(1 for a in actors if a["state"] == "ALIVE"),
            "jobs": jobs[:10],
            "history": self.history.series(),
        }

    # ----------------------------------------------------------------- cluster
    async def nodes(self) -> dict[str, Any]:
        nodes = await self.cluster.nodes()
        infos, actors, running, head_processes = await asyncio.gather(
            self.cluster.node_infos(nodes), self.cluster.actors(), self._running_by_worker(),
            self.cluster.head_processes())
        self.logs.learn_owners(infos)
        out = [self._node_row(n, infos.get(n["NodeID"]), actors, running, head_processes) for n in nodes]
        out.sort(key=lambda n: (n["state"] != "ALIVE", not n["is_head"], n["ip"], n["node_id"]))
        return {"nodes": out, "autoscaler": await self.cluster.autoscaler(nodes)}

    async def _running_by_worker(self) -> dict[str, str]:
        return await self.tasks.running_by_worker() if self.tasks is not None else {}

    async def node(self, node_id: str) -> dict[str, Any]:
        document = await self.nodes()
        for node in document["nodes"]:
            if node["node_id"] == node_id:
                node["logs"] = (await self._log_groups()).get(node_id, [])
                return {"node": node}
        raise KeyError(f"no node {node_id}")

    def _node_row(self, n: dict[str, Any], info: dict[str, Any] | None, actors: list[dict[str, Any]],
                  running: dict[str, str], head_processes: list[dict[str, Any]]) -> dict[str, Any]:
        actor_by_pid = {a["pid"]: a for a in actors if a.get("node_id") == n["NodeID"] and a["state"] == "ALIVE"}
        workers = []
        for w in (info or {}).get("workers", []):
            actor = actor_by_pid.get(w["pid"])
            doing = f"actor {actor['class_name']}" + (f" ({actor['name']})" if actor.get("name") else "") if actor else None
            workers.append({
                "pid": w["pid"], "worker_id": w["worker_id"], "state": w["state"], "rss": w.get("rss"),
                "running": doing or running.get(str(w["pid"])) or ("idle" if w["state"] == "IDLE" else None),
            })
        components = list(head_processes if n.get("IsHead") else []) + list((info or {}).get("processes", []))
        if workers:
            components.append({"name": f"workers ({len(workers)})", "pid": "",
                               "rss": sum(w["rss"] or 0 for w in workers)})
        store_dir = n.get("ObjectStoreDir", "")
        used = n.get("ObjectStoreUsed", 0)
        return {
            "node_id": n["NodeID"], "state": "ALIVE" if n.get("Alive") else "DEAD",
            "ip": n["NodeManagerAddress"], "hostname": n.get("NodeManagerHostname", ""),
            "is_head": bool(n.get("IsHead")), "death_reason": n.get("DeathReason"),
            "resources_total": {k: v for k, v in n["Resources"].items() if not _is_internal_resource(k)},
            "resources_available": n["AvailableResources"],
            "store": {
                "used": used, "capacity": n.get("ObjectStoreCapacity", 0),
                "objects": n.get("ObjectStoreObjects", 0), "spilled": n.get("ObjectStoreSpilled", 0),
                # Outside /dev/shm the store lives on disk: all of its bytes are "fallback".
                "fallback": used if store_dir and not store_dir.startswith("/dev/shm") else 0,
                "dir": store_dir,
            },
            "memory": (info or {}).get("host_memory") or {"total": 0, "used": 0},
            "components": components,
            "workers": sorted(workers, key=lambda w: w["pid"]),
        }

    # -------------------------------------------------------------------- jobs
    async def _job_rows(self) -> list[dict[str, Any]]:
        details = await self.jobs_source.list_jobs() if self.jobs_source is not None else None
        if details is not None:
            rows = [job_row_from_details(d) for d in details]
        else:
            rows = [job_row_from_driver(j) for j in await self.cluster.jobs()]
        rows.sort(key=lambda r: r["start_time"] or 0, reverse=True)
        return rows

    async def jobs(self) -> dict[str, Any]:
        rows = await self._job_rows()
        return {"total": len(rows), "jobs": rows[: self.rows]}

    async def job(self, job_key: str) -> dict[str, Any]:
        row = next((r for r in await self._job_rows() if job_key in (r["id"], r["job_id"], r["submission_id"])), None)
        if row is None:
            raise KeyError(f"no job {job_key}")
        functions: list[dict[str, Any]] = []
        failed_total = 0
        failed_rows: list[dict[str, Any]] = []
        if row["job_id"]:
            functions = await self.counts.function_counts(row["job_id"])
        if self.tasks is not None and row["job_id"]:
            failed_total, failed_rows = await self.tasks.failed_tasks(row["job_id"], self.rows)
        driver_log = None
        if row["submission_id"]:
            name = f"job-driver-{row['submission_id']}.log"
            nodes = await self.cluster.nodes()
            head = next((n["NodeID"] for n in nodes if n.get("IsHead")), "")
            if any(f["name"] == name for f in self.logs.listing()):
                driver_log = {"node_id": head, "file": name}
        return {"job": row, "functions": functions, "failed": {"total": failed_total, "rows": failed_rows},
                "tasks_recorded": self.tasks is not None, "driver_log": driver_log}

    # ------------------------------------------------------------------ actors
    async def actors(self) -> dict[str, Any]:
        rows = [self._actor_row(a) for a in await self.cluster.actors()]
        order = {"ALIVE": 0, "RESTARTING": 1, "PENDING_CREATION": 2, "DEPENDENCIES_UNREADY": 3, "DEAD": 4}
        rows.sort(key=lambda a: (order.get(a["state"], 5), a["class_name"], a["actor_id"]))
        return {"total": len(rows), "actors": rows[: max(self.rows, 1000)]}

    async def actor(self, actor_id: str) -> dict[str, Any]:
        found = next((a for a in await self.cluster.actors() if a["actor_id"] == actor_id), None)
        if found is None:
            raise KeyError(f"no actor {actor_id}")
        counts: dict[str, int] = {}
        total = 0
        rows: list[dict[str, Any]] = []
        scope = "actor"
        if self.tasks is not None:
            counts, total, rows = await self.tasks.actor_calls(actor_id, self.rows)
        else:
            # Without task events: the exact counts of calls to this class's methods in its job.
            scope = "class"
            prefix = f"{found.get('class_name', '')}."
            for fn in await self.counts.function_counts(found.get("job_id") or ""):
                if fn["name"].startswith(prefix):
                    for state, n in fn["counts"].items():
                        if n:
                            counts[state] = counts.get(state, 0) + n
            total = sum(counts.values())
        return {"actor": self._actor_row(found),
                "calls": {"counts": counts, "total": total, "rows": rows, "scope": scope},
                "tasks_recorded": self.tasks is not None}

    def _actor_row(self, a: dict[str, Any]) -> dict[str, Any]:
        death = a.get("death_cause") or a.get("creation_error")
        return {
            "actor_id": a["actor_id"], "class_name": a.get("class_name", ""), "name": a.get("name") or "",
            "namespace": a.get("namespace") or "", "state": a["state"], "node_id": a.get("node_id") or "",
            "pid": a.get("pid"), "num_restarts": a.get("num_restarts", 0), "job_id": a.get("job_id") or "",
            "death_cause": death if a["state"] == "DEAD" or a.get("num_restarts") else (death or ""),
            "log_file": self.logs.stdout_of(a.get("node_id") or "", a.get("pid")),
        }

    # ------------------------------------------------------------- task stream
    async def taskstream(self, window_s: float) -> dict[str, Any]:
        now = time.time()
        executions = await self.tasks.executions(now - window_s) if self.tasks is not None else []
        rows: dict[tuple[str, int], int] = {}
        workers: list[dict[str, Any]] = []
        tasks = []
        functions: set[str] = set()
        for e in sorted(executions, key=lambda e: (e["node_id"], e["pid"], e["start"])):
            key = (e["node_id"], e["pid"])
            if key not in rows:
                rows[key] = len(workers)
                workers.append({"node_id": e["node_id"], "pid": e["pid"],
                                "label": f"{e['node_ip'] or e['node_id'][:8]} pid {e['pid']}"})
            functions.add(e["name"])
            tasks.append([rows[key], e["name"], round(e["start"], 3),
                          None if e["end"] is None else round(e["end"], 3), e["state"]])
        # The window moves with time; rounding it keeps the document equal between polls
        # that found nothing new, so they get 304.
        return {"window": window_s, "workers": workers, "tasks": tasks, "functions": sorted(functions),
                "tasks_recorded": self.tasks is not None}

    # -------------------------------------------------------------------- logs
    async def _log_groups(self) -> dict[str, list[dict[str, Any]]]:
        nodes = await self.cluster.nodes()
        return self.logs.by_node(nodes)

    async def log_index(self) -> dict[str, Any]:
        nodes = await self.cluster.nodes()
        groups = self.logs.by_node(nodes)
        out = []
        for n in sorted(nodes, key=lambda n: (not n.get("IsHead"), n["NodeManagerAddress"], n["NodeID"])):
            out.append({"node_id": n["NodeID"], "ip": n["NodeManagerAddress"], "is_head": bool(n.get("IsHead")),
                        "state": "ALIVE" if n.get("Alive") else "DEAD",
                        "files": [{"name": f["name"], "size": f["size"]} for f in groups.get(n["NodeID"], [])]})
        return {"nodes": out}


def _host_memory(alive: list[dict[str, Any]], infos: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Memory of the distinct hosts (several nodes of one machine count it once)."""
    hosts: dict[str, dict[str, int]] = {}
    for n in alive:
        info = infos.get(n["NodeID"])
        if info and info.get("host_memory"):
            hosts[n.get("NodeManagerHostname") or n["NodeManagerAddress"]] = info["host_memory"]
    return {"total": sum(h["total"] for h in hosts.values()), "used": sum(h["used"] for h in hosts.values())}


def _is_internal_resource(name: str) -> bool:
    return name.startswith("node:") or "_group_" in name or name.startswith("bundle_group")


def _resource_order(name: str) -> tuple[int, str]:
    return ({"CPU": 0, "GPU": 1, "memory": 2, "object_store_memory": 3}.get(name, 4), name)
