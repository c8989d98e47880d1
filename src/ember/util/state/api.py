"""``ember.util.state``: Ray's state API (list/get/summarize, logs) with Ray's signatures.

Queries go straight to the control service (and node daemons for workers, objects and
logs) over the cluster's authenticated RPC, not through the HTTP server: the API works
with ``include_dashboard=False``, from tasks, and while the HTTP process restarts. The
HTTP routes (``/api/v0/...``) and ``ember list`` call the same functions
(``sources.py``), so every client sees the same rows.

Filters apply *before* the limit. When the limit cuts the result, a warning says how
many rows match in all; when task events were lost (retention or a full buffer), the
call raises ``RayStateApiException`` if ``raise_on_missing_output`` (Ray's default),
else warns.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from typing import Any, TypeVar

from ember.exceptions import RayStateApiException
from ember.util.state.common import (
    DEFAULT_LIMIT,
    DEFAULT_RPC_TIMEOUT,
    ID_FIELDS,
    RESOURCES,
    ActorState,
    JobState,
    NodeState,
    ObjectState,
    PlacementGroupState,
    TaskState,
    WorkerState,
)
from ember.util.state.sources import StateSource, list_resource, summarize

T = TypeVar("T")
Filters = list[tuple[str, str, Any]] | None


def _resolve(address: str | None) -> tuple[str, str]:
    """The control-service address and token of the cluster to query."""
    from ember._private import session

    if address is None:
        address = os.environ.get("EMBER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "auto"
    if address.startswith(("ember://", "ray://")):
        address = address.split("://", 1)[1]
    if address in ("auto", "local", ""):
        info = session.read_current_cluster()
        if info is None:
            raise ConnectionError("No running Ember cluster found: call ember.init() or start one with `ember start --head`.")
        address = str(info["gcs_address"])
    return address, session.cluster_token(address)


def run_query(address: str | None, timeout: float, make: Any) -> Any:
    """Run ``make(source)`` (a coroutine factory) against the cluster; returns its result."""
    from ember._private import runtime

    worker = runtime.core_worker_or_none()
    if address is None and worker is not None and worker.io is not None:
        src = StateSource(lambda m, p: worker.gcs_request(m, p, timeout), worker.gcs_address, worker.token, timeout)
        return _translate(lambda: worker.io.run(make(src), timeout + 5))
    gcs_address, token = _resolve(address)
    return _translate(lambda: asyncio.run(_with_connection(gcs_address, token, timeout, make)))


async def _with_connection(gcs_address: str, token: str, timeout: float, make: Any) -> Any:
    from ember.rpc import connect

    conn = await connect(gcs_address, token, timeout=min(timeout, 10.0))
    try:
        src = StateSource(lambda m, p: conn.call(m, p, timeout), gcs_address, token, timeout)
        return await make(src)
    finally:
        conn.close()


def _translate(run: Any) -> Any:
    from ember.exceptions import ErrorCode, RemoteError, RpcError

    try:
        return run()
    except RemoteError as exc:
        if exc.code is ErrorCode.BAD_REQUEST:
            raise ValueError(exc.message) from None
        raise RayStateApiException(f"the state query failed: {exc}") from exc
    except RpcError as exc:
        raise RayStateApiException(f"the cluster did not answer the state query: {exc}") from exc


def check_output(resource: str, reply: dict[str, Any], limit: int, raise_on_missing_output: bool) -> None:
    """Tell the caller what the rows do not show (see the module's docstring)."""
    if reply.get("partial_failure_warning"):
        message = f"Some {resource} are missing: {reply['partial_failure_warning']}."
        if raise_on_missing_output:
            raise RayStateApiException(message + " Pass raise_on_missing_output=False to get the rest.")
        warnings.warn(message, stacklevel=3)
    if reply.get("dropped"):
        message = (f"{reply['dropped']} task(s) were dropped from the task-event store (retention "
                   "task_events_max_tasks_per_job, or a process's full buffer): the output may miss them.")
        if raise_on_missing_output:
            raise RayStateApiException(message + " Pass raise_on_missing_output=False to get the rest.")
        warnings.warn(message, stacklevel=3)
    if reply["total"] > reply["num_after_truncation"]:
        warnings.warn(
            f"Showing {reply['num_after_truncation']} of {reply['total']} {resource} that match "
            f"(limit={limit}); use a larger limit or more filters to see the rest.", stacklevel=3,
        )


def _list(resource: str, address: str | None, filters: Filters, limit: int, timeout: float, detail: bool,
          raise_on_missing_output: bool) -> list[Any]:
    filters = list(filters or [])
    reply = run_query(address, timeout, lambda src: list_resource(src, resource, filters, limit, detail))
    check_output(resource, reply, limit, raise_on_missing_output)
    cls = RESOURCES[resource]
    return [cls.from_dict(row) for row in reply["result"]]


def _get(resource: str, id: str, address: str | None, timeout: float) -> Any:
    rows = _list(resource, address, [(ID_FIELDS[resource], "=", id)], 10_000, timeout, True, False)
    if not rows:
        return None
    if resource == "objects" or (resource == "tasks" and len(rows) > 1):
        return rows
    return rows[0]


# ============================================================================ list
def list_tasks(address: str | None = None, filters: Filters = None, limit: int = DEFAULT_LIMIT,
               timeout: int = DEFAULT_RPC_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
               _explain: bool = False) -> list[TaskState]:
    """Tasks and actor tasks, newest first. ``filters``: ``[("state", "=", "RUNNING"), ...]``."""
    return _list("tasks", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_actors(address: str | None = None, filters: Filters = None, limit: int = DEFAULT_LIMIT,
                timeout: int = DEFAULT_RPC_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
                _explain: bool = False) -> list[ActorState]:
    return _list("actors", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_nodes(address: str | None = None, filters: Filters = None, limit: int = DEFAULT_LIMIT,
               timeout: int = DEFAULT_RPC_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
               _explain: bool = False) -> list[NodeState]:
    return _list("nodes", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_jobs(address: str | None = None, filters: Filters = None, limit: int = DEFAULT_LIMIT,
              timeout: int = DEFAULT_RPC_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
              _explain: bool = False) -> list[JobState]:
    return _list("jobs", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_placement_groups(address: str | None = None, filters: Filters = None, limit: int = DEFAULT_LIMIT,
                          timeout: int = DEFAULT_RPC_TIMEOUT, detail: bool = False,
                          raise_on_missing_output: bool = True, _explain: bool = False) -> list[PlacementGroupState]:
    return _list("placement_groups", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_workers(address: str | None = None, filters: Filters = None, limit: int = DEFAULT_LIMIT,
                 timeout: int = DEFAULT_RPC_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> list[WorkerState]:
    return _list("workers", address, filters, limit, timeout, detail, raise_on_missing_output)


def list_objects(address: str | None = None, filters: Filters = None, limit: int = DEFAULT_LIMIT,
                 timeout: int = DEFAULT_RPC_TIMEOUT, detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> list[ObjectState]:
    return _list("objects", address, filters, limit, timeout, detail, raise_on_missing_output)


# ============================================================================ get
def get_task(id: Any, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
             _explain: bool = False) -> TaskState | list[TaskState] | None:
    """A task by hex id (or by the ``ObjectRef`` it returned)."""
    task_id = id if isinstance(id, str) else id.task_id().hex()
    return _get("tasks", task_id, address, timeout)  # type: ignore[no-any-return]


def get_actor(id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
              _explain: bool = False) -> ActorState | None:
    return _get("actors", id, address, timeout)  # type: ignore[no-any-return]


def get_node(id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
             _explain: bool = False) -> NodeState | None:
    return _get("nodes", id, address, timeout)  # type: ignore[no-any-return]


def get_job(id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
            _explain: bool = False) -> JobState | None:
    job = _get("jobs", id, address, timeout)
    if job is None:  # Ray looks jobs up by submission id too
        rows = _list("jobs", address, [("submission_id", "=", id)], 1, timeout, True, False)
        job = rows[0] if rows else None
    return job  # type: ignore[no-any-return]


def get_placement_group(id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
                        _explain: bool = False) -> PlacementGroupState | None:
    return _get("placement_groups", id, address, timeout)  # type: ignore[no-any-return]


def get_worker(id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
               _explain: bool = False) -> WorkerState | None:
    return _get("workers", id, address, timeout)  # type: ignore[no-any-return]


def get_objects(id: str, address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
                _explain: bool = False) -> list[ObjectState]:
    return _get("objects", id, address, timeout) or []


# ============================================================================ summaries
def _summarize(resource: str, address: str | None, timeout: float, raise_on_missing_output: bool) -> dict[str, Any]:
    reply = run_query(address, timeout, lambda src: summarize(src, resource))
    dropped = reply["cluster"].pop("dropped", 0)
    if dropped:
        check_output(resource, {"dropped": dropped, "total": 0, "num_after_truncation": 0}, 0, raise_on_missing_output)
    return reply  # type: ignore[no-any-return]


def summarize_tasks(address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
                    raise_on_missing_output: bool = True, _explain: bool = False) -> dict[str, Any]:
    """``{"cluster": {"summary": {func_name: {"func_or_class_name", "type", "state_counts"}}, "total_tasks", ...}}``."""
    return _summarize("tasks", address, timeout, raise_on_missing_output)


def summarize_actors(address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
                     raise_on_missing_output: bool = True, _explain: bool = False) -> dict[str, Any]:
    return _summarize("actors", address, timeout, raise_on_missing_output)


def summarize_objects(address: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT,
                      raise_on_missing_output: bool = True, _explain: bool = False) -> dict[str, Any]:
    return _summarize("objects", address, timeout, raise_on_missing_output)
