"""Jobs as the jobs API lists them (Ray's ``JobDetails``: submitted jobs and plain drivers).

The UI asks this server's own ``GET /api/jobs/`` (the jobs module), so it shows exactly
what ``JobSubmissionClient.list_jobs()`` returns. A server without the jobs module
(404) falls back to the control service's driver records.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.dashboard.context import DashboardContext


class JobsSource:
    def __init__(self, ctx: DashboardContext, timeout_s: float) -> None:
        self.ctx = ctx
        self._timeout_s = timeout_s
        self._session: Any = None
        self._api_missing = False

    async def list_jobs(self) -> list[dict[str, Any]] | None:
        """Every job as ``JobDetails`` JSON, or None when this server has no jobs API."""
        if self._api_missing or not self.ctx.port:
            return None
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        host = "127.0.0.1" if self.ctx.host in ("0.0.0.0", "::", "") else self.ctx.host
        url = f"http://{'[' + host + ']' if ':' in host else host}:{self.ctx.port}/api/jobs/"
        async with self._session.get(url, headers={"Authorization": f"Bearer {self.ctx.token}"}) as response:
            if response.status == 404:
                self._api_missing = True
                return None
            response.raise_for_status()
            jobs: list[dict[str, Any]] = await response.json()
            return jobs

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def job_row_from_details(d: dict[str, Any]) -> dict[str, Any]:
    """A jobs-table row from Ray's ``JobDetails`` (times in milliseconds)."""
    start = d["start_time"] / 1000 if d.get("start_time") else None
    end = d["end_time"] / 1000 if d.get("end_time") else None
    job_id = d.get("job_id") or ""
    return {
        "id": d.get("submission_id") or job_id, "job_id": job_id, "submission_id": d.get("submission_id") or "",
        "kind": d.get("type") or ("SUBMISSION" if d.get("submission_id") else "DRIVER"),
        "status": d.get("status") or "PENDING", "entrypoint": d.get("entrypoint") or "",
        "start_time": start, "end_time": end, "duration": (end or time.time()) - start if start else None,
        "message": d.get("message") or "", "driver_pid": (d.get("driver_info") or {}).get("pid"),
    }


def job_row_from_driver(j: dict[str, Any]) -> dict[str, Any]:
    """A jobs-table row from the control service's driver record (times in seconds)."""
    start, end = j.get("start_time"), j.get("end_time")
    return {
        "id": j["job_id"], "job_id": j["job_id"], "submission_id": j.get("submission_id") or "",
        "kind": "DRIVER", "status": j.get("status") or "RUNNING", "entrypoint": j.get("entrypoint") or "",
        "start_time": start, "end_time": end, "duration": (end or time.time()) - start if start else None,
        "message": "", "driver_pid": j.get("driver_pid"),
    }
