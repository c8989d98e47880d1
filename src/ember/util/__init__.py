"""Ray-compatible utilities (``ember.util``)."""

from typing import Any

from ember._private.serialization import deregister_serializer, register_serializer

# As in Ray, ``ember.util.placement_group`` is the function (bound after its module is imported).
from ember.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)


def get_node_ip_address() -> str:
    """The address of this process's node (Ember's default, 127.0.0.1, before ``init``)."""
    from ember._private import runtime

    worker = runtime.core_worker_or_none()
    return worker.node_ip if worker is not None else "127.0.0.1"


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """Names of the live named actors in this job's namespace; with ``all_namespaces=True``,
    ``{"name": ..., "namespace": ...}`` dicts for every namespace (as Ray)."""
    from ember._private import runtime

    worker = runtime.core_worker()
    rows: list[Any] = worker.gcs_call("list_named_actors", {"all_namespaces": all_namespaces, "namespace": worker.namespace})
    if all_namespaces:
        return rows
    return [row["name"] for row in rows]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing ember.util stays cheap.
    if name == "ActorPool":
        from ember.util.actor_pool import ActorPool

        return ActorPool
    raise AttributeError(f"module 'ember.util' has no attribute {name!r}")


__all__ = [
    "ActorPool", "PlacementGroup", "deregister_serializer", "get_current_placement_group",
    "get_node_ip_address", "list_named_actors",
    "get_placement_group", "placement_group", "placement_group_table", "register_serializer",
    "remove_placement_group",
]
