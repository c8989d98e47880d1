"""Placement groups (Ray's ``ray.util.placement_group``).

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ember.get(pg.ready())
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    remove_placement_group(pg)
"""

from __future__ import annotations

import numbers
from typing import Any

import ember
from ember._private import ids, runtime
from ember._private.ids import BaseID
from ember._private.object_ref import ObjectRef
from ember._private.placement_policy import BUNDLE_RESOURCE, STRATEGIES
from ember.protocol.gcs import PlacementGroupRecord


class PlacementGroupID(BaseID):
    __slots__ = ()


#: Bundles of the groups this process has seen (a group's bundles never change): checking
#: every task a captured group's children submit must not cost a control-service call each.
_known_bundles: dict[bytes, list[dict[str, float]]] = {}


class PlacementGroup:
    """A handle to a placement group."""

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict[str, float]] | None = None) -> None:
        self.id = id
        self.bundle_cache = bundle_cache

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        if self.bundle_cache is None:
            self.bundle_cache = _known_bundles.get(self.id.binary())
        if self.bundle_cache is None:
            info = placement_group_table(self)
            self.bundle_cache = [info["bundles"][i] for i in sorted(info["bundles"])]
            if self.bundle_cache:
                _known_bundles[self.id.binary()] = self.bundle_cache
        return self.bundle_cache

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves (to True) once every bundle is placed."""
        worker = runtime.core_worker()
        pg_id = self.id.binary()

        async def wait_created() -> bool:
            state = await worker.gcs_request("wait_placement_group", {"pg_id": pg_id}, timeout=None)
            if state != "CREATED":
                raise ValueError(f"placement group {pg_id.hex()} was removed before it was placed")
            return True

        ref: ObjectRef = worker.object_from_coroutine(wait_created)
        return ref

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Whether the group is placed within ``timeout_seconds``."""
        ready, _ = ember.wait([self.ready()], timeout=timeout_seconds)
        return bool(ready)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()})"


def _validate_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, list) or not bundles:
        raise ValueError("placement_group() needs a non-empty list of bundles (dicts of resources)")
    out = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict) or not bundle:
            raise ValueError(f"bundle {i} must be a non-empty dict of resources, got {bundle!r}")
        for name, amount in bundle.items():
            if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or amount < 0:
                raise ValueError(f"bundle {i}: resource {name!r} must be a number >= 0, got {amount!r}")
        if all(v == 0 for v in bundle.values()):
            raise ValueError(f"bundle {i} requests no resources: {bundle!r}")
        if BUNDLE_RESOURCE in bundle:
            raise ValueError(
                f"bundle {i}: {BUNDLE_RESOURCE!r} is a system reserved resource, which is not allowed to be used "
                f"in placement groups: {bundle!r}"
            )
        out.append({str(k): float(v) for k, v in bundle.items()})
    return out


def placement_group(
    bundles: list[dict[str, float]],
    strategy: str = "PACK",
    name: str = "",
    lifetime: str | None = None,
    _max_cpu_fraction_per_node: float = 1.0,
    _soft_target_node_id: str | None = None,
    bundle_label_selector: Any = None,
) -> PlacementGroup:
    """Reserve ``bundles`` of resources across the cluster, placed atomically by ``strategy``."""
    checked = _validate_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    worker = runtime.core_worker_or_none()
    if worker is None:
        ember.init()
        worker = runtime.core_worker()
    pg_id = ids.random_unique_id()
    from ember.exceptions import RemoteError

    try:
        worker.gcs_call("create_placement_group", {
            "pg_id": pg_id, "bundles": checked, "strategy": strategy, "name": name,
            "namespace": worker.namespace, "lifetime": lifetime, "job": worker.current_job_id,
        })
    except RemoteError as exc:
        raise ValueError(exc.message) from None
    return PlacementGroup(PlacementGroupID(pg_id), checked)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Remove the group: its resources return to the nodes; tasks and actors in it end."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group() expects a PlacementGroup, got {type(placement_group).__name__}")
    runtime.core_worker().gcs_call("remove_placement_group", {"pg_id": placement_group.id.binary()})


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live placement group called ``placement_group_name`` in this namespace."""
    worker = runtime.core_worker()
    info = worker.gcs_call("get_placement_group", {"name": placement_group_name, "namespace": worker.namespace})
    if info is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    bundles = [info["bundles"][i] for i in sorted(info["bundles"])]
    return PlacementGroup(PlacementGroupID.from_hex(info["placement_group_id"]), bundles)  # type: ignore[arg-type]


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """State of one group, or of every group keyed by id (hex)."""
    table: dict[str, PlacementGroupRecord] = runtime.core_worker().gcs_call("placement_group_table", None)
    if placement_group is None:
        return table
    group = table.get(placement_group.id.hex())
    return dict(group) if group is not None else {}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the current task or actor runs in, when it was scheduled into one with
    ``placement_group_capture_child_tasks=True``; else None."""
    worker = runtime.core_worker_or_none()
    pg = worker.current_placement_group if worker is not None else None
    return PlacementGroup(PlacementGroupID(pg)) if pg else None


__all__ = [
    "PlacementGroup", "PlacementGroupID", "get_current_placement_group", "get_placement_group",
    "placement_group", "placement_group_table", "remove_placement_group",
]
