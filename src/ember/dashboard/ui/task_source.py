"""The web UI's view of single tasks, from the task events (``ember.util.state``)."""

from __future__ import annotations

from typing import Any

from ember.dashboard.context import DashboardContext
from ember.util.state.sources import StateSource, list_resource
from ember.util.state.timeline import executions


class StateTaskSource:
    def __init__(self, ctx: DashboardContext) -> None:
        self.src = StateSource(lambda m, p: ctx.gcs.call(m, p), ctx.gcs_address, ctx.token, 10.0)

    async def failed_tasks(self, job_id: str, limit: int) -> tuple[int, list[dict[str, Any]]]:
        reply = await list_resource(self.src, "tasks", [("job_id", "=", job_id), ("state", "=", "FAILED")], limit, True)
        return reply["total"], reply["result"]

    async def actor_calls(self, actor_id: str, limit: int) -> tuple[dict[str, int], int, list[dict[str, Any]]]:
        reply = await list_resource(self.src, "tasks", [("actor_id", "=", actor_id)], 10**9, True)
        counts: dict[str, int] = {}
        for row in reply["result"]:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        return counts, reply["total"], reply["result"][:limit]

    async def executions(self, since: float) -> list[dict[str, Any]]:
        return await executions(self.src, since)

    async def running_by_worker(self) -> dict[str, str]:
        reply = await list_resource(self.src, "tasks", [("state", "=", "RUNNING")], 10**9)
        return {str(r["worker_pid"]): r["name"] for r in reply["result"] if r["worker_pid"]}


def make_task_source(ctx: DashboardContext) -> StateTaskSource:
    return StateTaskSource(ctx)
