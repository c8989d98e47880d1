"""Ray's legacy ``ray.state`` helpers (``actors()``, ``nodes()``, ``jobs()``...), in Ray's shapes.

For the state API (``ember.util.state``) see that module; these are the older
functions that test suites and libraries still call.
"""

from __future__ import annotations

from typing import Any

from ember._private import runtime
from ember.api.cluster_info import available_resources, cluster_resources, nodes
from ember.protocol.gcs import ActorRecord

_ACTOR_STATES = ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD")


def _actor_info(row: ActorRecord) -> dict[str, Any]:
    address = row.get("address") or ["", 0]
    node_id = row.get("node_id") or b""
    return {
        "ActorID": row["actor_id"].hex(),
        "ActorClassName": row.get("class_name", ""),
        "IsDetached": bool(row.get("detached")),
        "Name": row.get("name") or "",
        "JobID": (row.get("job_id") or b"").hex(),
        "Address": {"IPAddress": address[0], "Port": address[1], "NodeID": node_id.hex()},
        "State": row["state"],
        "NumRestarts": row.get("num_restarts", 0),
        "DeathCause": row.get("death_cause"),
        "Pid": row.get("pid") or 0,
    }


def actors(actor_id: str | None = None, job_id: Any = None, actor_state_name: str | None = None) -> dict[str, Any]:
    """Actor table entries keyed by actor id (hex); with ``actor_id``, that actor's entry ({} if unknown).

    ``job_id`` (a ``JobID`` or hex string) and ``actor_state_name`` filter the table.
    """
    if actor_state_name is not None and actor_state_name not in _ACTOR_STATES:
        raise ValueError(f"actor_state_name must be one of {list(_ACTOR_STATES)}, got {actor_state_name!r}")
    rows: list[ActorRecord] = runtime.core_worker().gcs_call("list_actors", None)
    table = {row["actor_id"].hex(): _actor_info(row) for row in rows}
    if actor_id is not None:
        return table.get(actor_id, {})
    if job_id is not None:
        wanted = job_id if isinstance(job_id, str) else job_id.hex()
        table = {k: v for k, v in table.items() if v["JobID"] == wanted}
    if actor_state_name is not None:
        table = {k: v for k, v in table.items() if v["State"] == actor_state_name}
    return table


def jobs() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = runtime.core_worker().gcs_call("get_jobs", None)
    return rows


def current_node_id() -> str:
    node_id: bytes = runtime.core_worker().node_id
    return node_id.hex()


def node_ids() -> list[str]:
    return [node["NodeID"] for node in nodes() if node["Alive"]]


__all__ = ["actors", "available_resources", "cluster_resources", "current_node_id", "jobs", "node_ids", "nodes"]
