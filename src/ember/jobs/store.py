"""Submitted jobs' records in the control service's KV (namespace ``job_submission``).

The control service persists its KV (SQLite in ``ember start``'s session, or Redis), so
the records survive a restart of it, of the HTTP server and of the supervisors. Two
processes change a record — the job manager (submit, stop while PENDING, a dead
supervisor) and the job's supervisor (RUNNING, the outcome) — so every status change
is a compare-and-set on the stored bytes, checked against ``common.check_transition``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ember.jobs.common import IllegalJobTransition, JobInfo, JobStatus

NAMESPACE = "job_submission"
#: A supervisor on a node other than the head leaves a copy of its log's tail here.
LOGS_NAMESPACE = "job_submission_logs"

#: ``call(method, payload)``: one control-service request (waiting out its restarts).
GcsCall = Callable[[str, Any], Awaitable[Any]]


def core_worker_call(worker: Any) -> GcsCall:
    """A ``GcsCall`` through a core worker's control-service connection, usable from any loop."""

    async def call(method: str, payload: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(worker.gcs_request(method, payload), worker.io.loop)
        return await asyncio.wrap_future(future)

    return call


class JobStore:
    def __init__(self, call: GcsCall) -> None:
        self._call = call

    async def get(self, submission_id: str) -> JobInfo | None:
        data = await self._call("kv_get", {"ns": NAMESPACE, "key": submission_id.encode()})
        return None if data is None else JobInfo.decode(data)

    async def create(self, submission_id: str, info: JobInfo) -> bool:
        """Store a new record; False if one with this id exists (even an identical one: two
        submissions with the same id must not both start a supervisor)."""
        return bool(await self._call("kv_put", {"ns": NAMESPACE, "key": submission_id.encode(),
                                                "value": info.encode(), "expect": None}))

    async def transition(self, submission_id: str, status: JobStatus, **fields: Any) -> JobInfo:
        """Move the record to ``status`` with ``fields`` set.

        Raises ``KeyError`` if there is no record and ``IllegalJobTransition`` if its
        current status does not allow it (e.g. it is already final).
        """
        key = submission_id.encode()
        while True:
            current = await self._call("kv_get", {"ns": NAMESPACE, "key": key})
            if current is None:
                raise KeyError(submission_id)
            changed = JobInfo.decode(current).moved_to(status, **fields)
            data = changed.encode()
            if await self._call("kv_put", {"ns": NAMESPACE, "key": key, "value": data, "expect": current}):
                return changed
            # Someone else changed it in between (or our resent write already landed): read again.
            latest = await self._call("kv_get", {"ns": NAMESPACE, "key": key})
            if latest == data:
                return changed

    async def try_transition(self, submission_id: str, status: JobStatus, **fields: Any) -> JobInfo | None:
        """``transition``, or None if the record is gone or its status does not allow it."""
        try:
            return await self.transition(submission_id, status, **fields)
        except (KeyError, IllegalJobTransition):
            return None

    async def list(self) -> dict[str, JobInfo]:
        items = await self._call("kv_items", {"ns": NAMESPACE})
        return {bytes(k).decode(): JobInfo.decode(v) for k, v in items}

    async def delete(self, submission_id: str) -> bool:
        key = submission_id.encode()
        await self._call("kv_del", {"ns": LOGS_NAMESPACE, "key": key})
        return bool(await self._call("kv_del", {"ns": NAMESPACE, "key": key}))

    async def put_log_copy(self, submission_id: str, data: bytes) -> None:
        await self._call("kv_put", {"ns": LOGS_NAMESPACE, "key": submission_id.encode(), "value": data})

    async def get_log_copy(self, submission_id: str) -> bytes | None:
        data: bytes | None = await self._call("kv_get", {"ns": LOGS_NAMESPACE, "key": submission_id.encode()})
        return data
