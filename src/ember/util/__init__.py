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


def __getattr__(name: str) -> Any:
    # Lazy, so that importing ember.util stays cheap.
    if name == "ActorPool":
        from ember.util.actor_pool import ActorPool

        return ActorPool
    raise AttributeError(f"module 'ember.util' has no attribute {name!r}")


__all__ = [
    "ActorPool", "PlacementGroup", "deregister_serializer", "get_current_placement_group",
    "get_placement_group", "placement_group", "placement_group_table", "register_serializer",
    "remove_placement_group",
]
