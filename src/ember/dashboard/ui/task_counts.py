"""Tasks by function, state and job, summed from every node daemon's ``ray_tasks`` counts.

Each core worker counts what it owns (pending, submitted, and since it started every
finished and failed task and actor call) and what runs in it; its node daemon keeps the
latest report of each process (``task_counts`` RPC). Summing them gives exact counts,
never a sample. A process's counts leave with it, so the last counts seen for a job
whose driver has gone are kept here (``remembered_jobs`` of them), and a finished job
still shows its progress.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

#: The four states the progress bars show.
STATES = ("PENDING", "RUNNING", "FINISHED", "FAILED")

#: (job id hex, function name) -> {state: count}
Counts = dict[tuple[str, str], dict[str, int]]


def fold(rows: list[list[Any]]) -> Counts:
    """Fold ``[name, state, is_retry, source, job, count]`` rows into the four progress states.

    Owners count FINISHED / FAILED / pending states and SUBMITTED_TO_WORKER (queued at or
    running in a worker); executors count RUNNING. So PENDING is the owners' pending tasks
    plus those submitted but not yet running.
    """
    raw: dict[tuple[str, str], dict[str, int]] = {}
    for name, state, _retry, source, job, count in rows:
        job_hex = job.hex() if isinstance(job, (bytes, bytearray)) else str(job)
        bucket = raw.setdefault((job_hex, name), {})
        key = "RUNNING" if source == "executor" else state
        bucket[key] = bucket.get(key, 0) + int(count)
    out: Counts = {}
    for key, by_state in raw.items():
        running = by_state.pop("RUNNING", 0)
        submitted = by_state.pop("SUBMITTED_TO_WORKER", 0)
        finished = by_state.pop("FINISHED", 0)
        failed = by_state.pop("FAILED", 0)
        pending = sum(by_state.values()) + max(0, submitted - running)
        out[key] = {"PENDING": pending, "RUNNING": running, "FINISHED": finished, "FAILED": failed}
    return out


class TaskCounts:
    def __init__(self, fetch_rows: Callable[[], Awaitable[list[list[Any]]]], remembered_jobs: int) -> None:
        self._fetch_rows = fetch_rows
        self._remembered_jobs = remembered_jobs
        self._last: OrderedDict[str, dict[str, dict[str, int]]] = OrderedDict()  # job -> fn -> counts
        self._lock = asyncio.Lock()

    async def refresh(self) -> Counts:
        """Counts now; jobs that no longer report keep their last counts."""
        async with self._lock:
            live = fold(await self._fetch_rows())
            by_job: dict[str, dict[str, dict[str, int]]] = {}
            for (job, name), counts in live.items():
                by_job.setdefault(job, {})[name] = counts
            for job, functions in by_job.items():
                self._last[job] = functions
                self._last.move_to_end(job)
            while len(self._last) > self._remembered_jobs:
                self._last.popitem(last=False)
            merged: Counts = {}
            for job, functions in self._last.items():
                for name, counts in functions.items():
                    if job not in by_job and counts["RUNNING"] + counts["PENDING"]:
                        # Its owner is gone: nothing of it can still be pending or running.
                        counts = {**counts, "PENDING": 0, "RUNNING": 0}
                    merged[(job, name)] = counts
            return merged

    async def state_counts(self, job_id: str | None = None) -> dict[str, int]:
        totals = dict.fromkeys(STATES, 0)
        for (job, _name), counts in (await self.refresh()).items():
            if job_id is None or job == job_id:
                for state in STATES:
                    totals[state] += counts[state]
        return totals

    async def function_counts(self, job_id: str) -> list[dict[str, Any]]:
        rows = [{"name": name, "counts": counts} for (job, name), counts in (await self.refresh()).items()
                if job == job_id and any(counts.values())]
        rows.sort(key=lambda r: str(r["name"]))
        return rows
