"""Scheduling strategy objects (Ray's ``ray.util.scheduling_strategies``)."""

from __future__ import annotations

from typing import Any


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex); if it is dead or unknown, fail unless ``soft``."""

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False, _fail_on_unavailable: bool = False) -> None:
        if not isinstance(node_id, str):
            node_id = node_id.hex() if hasattr(node_id, "hex") else str(node_id)
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def to_wire(self) -> dict[str, Any]:
        try:
            node = bytes.fromhex(self.node_id)
        except ValueError:
            raise ValueError(f"NodeAffinitySchedulingStrategy: {self.node_id!r} is not a node id (hex)") from None
        return {"type": "node_affinity", "node_id": node, "soft": bool(self.soft)}

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class PlacementGroupSchedulingStrategy:
    """Run inside a bundle of a placement group."""

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "placement_group",
            "pg_id": self.placement_group.id.binary(),
            "bundle": self.placement_group_bundle_index,
        }


class NodeLabelSchedulingStrategy:
    def __init__(self, hard: dict[str, Any], *, soft: dict[str, Any] | None = None) -> None:
        self.hard = hard
        self.soft = soft or {}

    def to_wire(self) -> dict[str, Any]:
        raise ValueError("NodeLabelSchedulingStrategy is not supported by Ember yet")


def apply_placement_group(resources: dict[str, float], strategy: Any) -> tuple[dict[str, float], Any]:
    """For a placement-group strategy: the group's renamed resources, and the default policy.

    Other strategies pass through unchanged.
    """
    if not (isinstance(strategy, dict) and strategy.get("type") == "placement_group"):
        return resources, strategy
    from ember._private.placement_policy import bundle_marker, group_resource_names

    pg_hex = strategy["pg_id"].hex()
    index = int(strategy.get("bundle", -1))
    out: dict[str, float] = {}
    for name, amount in resources.items():
        indexed, wildcard = group_resource_names(pg_hex, index, name)
        out[indexed if index >= 0 else wildcard] = amount
    # The marker keeps even a zero-resource task on the group's node(s).
    out[bundle_marker(pg_hex, index)] = 0.001
    return out, None


def strategy_to_wire(strategy: Any) -> Any:
    """The wire form of a ``scheduling_strategy=`` option (None for the default)."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return "SPREAD"
    to_wire = getattr(strategy, "to_wire", None)
    if to_wire is None:
        raise ValueError(f"Unknown scheduling_strategy {strategy!r}")
    return to_wire()
