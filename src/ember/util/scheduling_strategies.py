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

    def to_wire(self) -> dict[str, Any] | None:
        if self.placement_group is None:
            return None  # Ray's escape: not in any group, even inside a task that captures its children
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


def resolve_strategy(
    options: dict[str, Any], captured_pg: bytes | None, demands: list[dict[str, float]], what: str,
) -> tuple[Any, list[Any] | None]:
    """The wire strategy of a task or actor, and ``[group id, capture children]`` when it runs in a group.

    * ``scheduling_strategy=PlacementGroupSchedulingStrategy(pg, ...)`` (or the older
      ``placement_group=`` options): that group; with ``placement_group=None``, no group.
    * No strategy, inside a task or actor that captures its children
      (``placement_group_capture_child_tasks=True``, ``captured_pg``): the same group,
      any bundle, and its children are captured too (as in Ray).

    Raises:
        ValueError: a demand fits no bundle of the group (it could never run), or the
            bundle index is out of range, as Ray does at ``.remote()``.
    """
    strategy = options.get("scheduling_strategy")
    legacy = options.get("placement_group")
    if strategy is None and legacy not in (None, "default"):
        strategy = PlacementGroupSchedulingStrategy(
            legacy, options.get("placement_group_bundle_index", -1),
            options.get("placement_group_capture_child_tasks"),
        )
    if strategy is None and captured_pg is not None:
        from ember.util.placement_group import PlacementGroup, PlacementGroupID

        strategy = PlacementGroupSchedulingStrategy(PlacementGroup(PlacementGroupID(captured_pg)), -1, True)
    if isinstance(strategy, PlacementGroupSchedulingStrategy) and strategy.placement_group is not None:
        _check_demands_fit(strategy, demands, what)
        group = [strategy.placement_group.id.binary(), bool(strategy.placement_group_capture_child_tasks)]
        return strategy_to_wire(strategy), group
    return strategy_to_wire(strategy), None


def _check_demands_fit(strategy: PlacementGroupSchedulingStrategy, demands: list[dict[str, float]], what: str) -> None:
    group = strategy.placement_group
    index = strategy.placement_group_bundle_index
    try:
        bundles = group.bundle_specs
    except (KeyError, TypeError):
        return  # unknown to the control service (removed): the task fails when it is scheduled
    if not bundles:
        return
    if not isinstance(index, int) or isinstance(index, bool) or not -1 <= index < len(bundles):
        raise ValueError(
            f"placement_group_bundle_index must be -1 (any bundle) or in [0, {len(bundles)}) for a group of "
            f"{len(bundles)} bundles, got {index!r}."
        )
    candidates = bundles if index == -1 else [bundles[index]]
    for demand in demands:
        needed = {name: amount for name, amount in demand.items() if amount > 0}
        if not any(all(bundle.get(name, 0) >= amount for name, amount in needed.items()) for bundle in candidates):
            where = "any bundle" if index == -1 else f"bundle {index}"
            raise ValueError(
                f"Cannot schedule {what} with the placement group because the resource request {needed} cannot "
                f"fit into {where} of the placement group, {bundles}. Request less (num_cpus=0 for an actor "
                "that needs no CPU to be placed), or create the group with a bigger bundle."
            )
