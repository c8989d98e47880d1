"""The autoscaler's decisions: a pure function of demand, nodes and config (no I/O, no clock).

``decide(config, nodes, fixed_nodes, demand, limits)`` returns which node types to launch
(how many of each, and why), which nodes to end (and why), and which demands no node
type can ever satisfy. One pass, in this order:

1. **Broken or surplus nodes**: a node that never joined within ``node_start_timeout_s``,
   a node whose daemon died, a node of a type no longer in the config, and nodes above
   a type's or the cluster's ``max_workers`` (idle ones first) are ended.
2. **min_workers** of every type are launched (not limited by ``upscaling_speed``).
3. **request_resources** bundles are packed onto every node's *total* resources (what
   the cluster could hold at once, as in Ray); what does not fit launches nodes (not
   limited by ``upscaling_speed``). Nodes holding requested bundles are kept.
4. **Placement groups**, each as a whole with its strategy (``placement_policy.place``
   on the free resources of the nodes, those launching counted at their full size, plus
   new nodes added one at a time until the group fits: a STRICT_SPREAD group of 3 gets
   3 nodes in one decision), then **queued tasks and actors** (first fit, largest first;
   new nodes of the type that packs the leftovers best, a GPU type only for demands that
   want a GPU). Launches here are limited to ``max(upscaling_initial_num_nodes,
   upscaling_speed * running nodes)`` launching at once.
5. **Idle nodes**: a joined node idle at least ``idle_timeout_s`` is ended, unless it holds
   objects (they would be lost), holds requested bundles, got demand in step 4, or its
   type would fall below ``min_workers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ember._private import resources as res
from ember._private.placement_policy import place
from ember.autoscaler.cluster_config import ClusterConfig, NodeType

Shape = dict[str, float]


@dataclass
class WorkerNode:
    """A node the provider runs for this cluster (never the head)."""

    provider_id: str
    node_type: str
    #: Its node daemon registered with the control service.
    joined: bool
    #: Seconds since the provider created it.
    age_s: float
    #: What it reports once joined (empty before: its type's resources are assumed).
    total: Shape = field(default_factory=dict)
    available: Shape = field(default_factory=dict)
    idle_s: float = 0.0
    #: Objects in its store (memory or fallback files) and bytes spilled to its disk: owners
    #: elsewhere still reference them, and they would be lost with the node.
    objects: int = 0
    spilled_bytes: int = 0
    #: False when it joined and its node daemon has since died.
    alive: bool = True

    @property
    def holds_objects(self) -> bool:
        return bool(self.objects or self.spilled_bytes)


@dataclass
class FixedNode:
    """A node the autoscaler does not manage (the head, nodes started by hand): capacity only."""

    node_id: str
    total: Shape
    available: Shape


@dataclass
class Demand:
    #: ``(shape, count)`` of queued tasks and actors.
    shapes: list[tuple[Shape, int]] = field(default_factory=list)
    #: ``(strategy, bundles)`` of placement groups waiting to be placed.
    placement_groups: list[tuple[str, list[Shape]]] = field(default_factory=list)
    #: ``request_resources`` bundles.
    requested: list[Shape] = field(default_factory=list)


@dataclass
class Limits:
    upscaling_initial_num_nodes: int = 5
    node_start_timeout_s: float = 60.0


@dataclass
class Decision:
    launch: dict[str, int] = field(default_factory=dict)
    #: One reason per launched type.
    launch_reasons: dict[str, str] = field(default_factory=dict)
    #: ``(provider_id, reason)``.
    terminate: list[tuple[str, str]] = field(default_factory=list)
    #: The provider ids in ``terminate`` ended for being idle (drained first: work may just be arriving).
    idle: set[str] = field(default_factory=set)
    #: Demands no node type (and no node) can ever satisfy: ``(description, reason)``.
    infeasible: list[tuple[str, str]] = field(default_factory=list)
    #: Demands that must wait for a limit (max_workers, upscaling_speed): ``(description, reason)``.
    waiting: list[tuple[str, str]] = field(default_factory=list)
    #: Nodes idle past the timeout that stay, and why: ``(provider_id, reason)``.
    kept: list[tuple[str, str]] = field(default_factory=list)


class _Bin:
    """Room on one node (real, launching, or to be launched) while demand is packed."""

    __slots__ = ("key", "free", "node_type", "worker", "used", "new")

    def __init__(self, key: bytes, free: res.Resources, node_type: str | None, worker: WorkerNode | None,
                 new: bool = False) -> None:
        self.key = key
        self.free = free
        self.node_type = node_type
        self.worker = worker
        self.used = False
        self.new = new


def describe(shape: Shape) -> str:
    return res.describe(res.to_fixed(shape))


class _Planner:
    def __init__(self, config: ClusterConfig, nodes: list[WorkerNode], fixed: list[FixedNode], limits: Limits) -> None:
        self.config = config
        self.types = config.worker_types
        self.limits = limits
        self.decision = Decision()
        self.ending: set[str] = set()
        self.nodes = nodes
        self.fixed = fixed
        self._launch_reason: dict[str, list[str]] = {}
        self._next = 0

    # ------------------------------------------------------------ counting
    def live(self) -> list[WorkerNode]:
        return [n for n in self.nodes if n.provider_id not in self.ending]

    def count(self, node_type: str) -> int:
        return sum(1 for n in self.live() if n.node_type == node_type) + self.decision.launch.get(node_type, 0)

    def total_workers(self) -> int:
        return len(self.live()) + sum(self.decision.launch.values())

    def room_for(self, node_type: str) -> bool:
        t = self.types.get(node_type)
        return t is not None and self.count(node_type) < t.max_workers and self.total_workers() < self.config.max_workers

    def end(self, node: WorkerNode, reason: str) -> None:
        if node.provider_id not in self.ending:
            self.ending.add(node.provider_id)
            self.decision.terminate.append((node.provider_id, reason))

    def launch(self, node_type: str, reason: str) -> _Bin:
        self.decision.launch[node_type] = self.decision.launch.get(node_type, 0) + 1
        reasons = self._launch_reason.setdefault(node_type, [])
        if reason not in reasons:
            reasons.append(reason)
        self._next += 1
        return _Bin(b"new-%06d" % self._next, res.to_fixed(self.types[node_type].resources), node_type, None, new=True)

    def finish(self) -> Decision:
        for node_type, reasons in self._launch_reason.items():
            self.decision.launch_reasons[node_type] = "; ".join(reasons)
        return self.decision

    # ------------------------------------------------------------ step 1
    def end_broken_and_surplus(self) -> None:
        for node in self.nodes:
            if not node.joined and node.age_s > self.limits.node_start_timeout_s:
                self.end(node, f"it did not join the cluster within {self.limits.node_start_timeout_s:g}s")
            elif node.joined and not node.alive:
                self.end(node, "its node daemon died")
            elif node.node_type not in self.types:
                self.end(node, f"its node type {node.node_type!r} is not a worker type of the config")
        for name, t in self.types.items():
            surplus = self.count(name) - t.max_workers
            for node in self._removal_order([n for n in self.live() if n.node_type == name])[: max(0, surplus)]:
                self.end(node, f"node type {name!r} has more than its max_workers ({t.max_workers})")
        surplus = len(self.live()) - self.config.max_workers
        for node in self._removal_order(self.live())[: max(0, surplus)]:
            self.end(node, f"the cluster has more worker nodes than max_workers ({self.config.max_workers})")

    @staticmethod
    def _removal_order(nodes: list[WorkerNode]) -> list[WorkerNode]:
        """Nodes doing nothing first: not joined, then the longest idle."""
        return sorted(nodes, key=lambda n: (n.joined, n.holds_objects, -n.idle_s))

    # ------------------------------------------------------------ step 2
    def keep_min_workers(self) -> None:
        for name, t in self.types.items():
            while self.count(name) < t.min_workers and self.total_workers() < self.config.max_workers:
                self.launch(name, f"min_workers is {t.min_workers}")

    # ------------------------------------------------------------ bins
    def bins(self, *, totals: bool) -> list[_Bin]:
        out = [_Bin(b"fixed-" + fixed.node_id.encode(), res.to_fixed(fixed.total if totals else fixed.available), None, None)
               for fixed in self.fixed]
        for node in self.live():
            t = self.types[node.node_type]
            if node.joined:
                amounts = node.total if totals else node.available
            else:
                amounts = t.resources  # launching: it will have its type's resources
            out.append(_Bin(b"node-" + node.provider_id.encode(), res.to_fixed(amounts), node.node_type, node))
        for name, count in self.decision.launch.items():
            for _ in range(count):
                self._next += 1
                out.append(_Bin(b"new-%06d" % self._next, res.to_fixed(self.types[name].resources), name, None, new=True))
        return out

    def feasible_somewhere(self, need: res.Resources) -> bool:
        if any(res.fits(need, res.to_fixed(t.resources)) for t in self.types.values()):
            return True
        return any(res.fits(need, res.to_fixed(n.total)) for n in self.fixed) or any(
            res.fits(need, res.to_fixed(n.total)) for n in self.live() if n.joined)

    # ------------------------------------------------------------ step 3
    def satisfy_requests(self, requested: list[Shape]) -> set[str]:
        """Pack requested bundles onto total capacity; launch for the rest. Returns the nodes holding some."""
        if not requested:
            return set()
        bins = self.bins(totals=True)
        leftovers = _pack([res.to_fixed(b) for b in requested], bins)
        self._launch_for(leftovers, bins, "requested bundle(s) (request_resources)", limit=None)
        return {b.worker.provider_id for b in bins if b.used and b.worker is not None}

    # ------------------------------------------------------------ step 4
    def place_demand(self, demand: Demand, budget: int) -> tuple[set[str], int]:
        bins = self.bins(totals=False)
        for strategy, bundles in demand.placement_groups:
            budget -= self._place_group(strategy, bundles, bins, budget)
        shapes: list[res.Resources] = []
        for shape, count in demand.shapes:
            shapes += [res.to_fixed(shape)] * max(0, int(count))
        leftovers = _pack(shapes, bins)
        budget -= self._launch_for(leftovers, bins, "queued task/actor request(s)", limit=budget)
        return {b.worker.provider_id for b in bins if b.used and b.worker is not None}, budget

    def _place_group(self, strategy: str, bundles: list[Shape], bins: list[_Bin], budget: int) -> int:
        label = f"placement group {strategy} {' '.join(describe(b) for b in bundles)}"
        fixed = [res.to_fixed(b) for b in bundles]
        infeasible = [b for b in fixed if not self.feasible_somewhere(b)]
        if strategy == "STRICT_PACK":
            infeasible = [] if self.feasible_somewhere(_sum(fixed)) else [_sum(fixed)]
        if infeasible:
            self.decision.infeasible.append((label, f"no node type has {res.describe(infeasible[0])}"))
            return 0
        added: list[_Bin] = []
        while True:
            choice = place(fixed, strategy, {b.key: b.free for b in bins + added})
            if choice is not None:
                by_key = {b.key: b for b in bins + added}
                for bundle, key in zip(fixed, choice):
                    res.subtract(by_key[key].free, bundle)
                    by_key[key].used = True
                for b in added:
                    assert b.node_type is not None
                    self.decision.launch[b.node_type] = self.decision.launch.get(b.node_type, 0) + 1
                    reasons = self._launch_reason.setdefault(b.node_type, [])
                    if label not in reasons:
                        reasons.append(label)
                bins.extend(added)
                return len(added)
            if len(added) >= len(fixed):
                break
            node_type = self._type_for(_sum(fixed) if strategy == "STRICT_PACK" else max(fixed, key=_size),
                                       fixed, extra=len(added))
            if node_type is None or len(added) >= budget:
                why = "the upscaling_speed limit" if node_type is not None else "max_workers"
                self.decision.waiting.append((label, f"needs more nodes than {why} allows now"))
                return 0
            self._next += 1
            added.append(_Bin(b"new-%06d" % self._next, res.to_fixed(self.types[node_type].resources), node_type, None, True))
        self.decision.waiting.append((label, "cannot be placed even on new nodes of the configured types"))
        return 0

    def _type_for(self, need: res.Resources, wants: list[res.Resources], extra: int = 0) -> str | None:
        """The smallest node type with room (``extra`` more planned) that fits ``need``; GPU types last
        unless a demand wants a GPU."""
        wants_gpu = any(w.get("GPU") for w in wants)
        candidates = []
        for name, t in self.types.items():
            shape = res.to_fixed(t.resources)
            if not res.fits(need, shape):
                continue
            if self.count(name) + extra >= t.max_workers or self.total_workers() + extra >= self.config.max_workers:
                continue
            candidates.append(((bool(shape.get("GPU")) and not wants_gpu), _size(shape), name))
        return min(candidates)[2] if candidates else None

    def _launch_for(self, leftovers: list[res.Resources], bins: list[_Bin], why: str, limit: int | None) -> int:
        """Launch nodes for ``leftovers`` (packed onto them as they are added); returns how many."""
        launched = 0
        reason = f"{len(leftovers)} {why} waiting: {_summary(leftovers)}"
        while leftovers:
            if limit is not None and launched >= limit:
                break
            best = self._best_type(leftovers)
            if best is None:
                break
            new_bin = self.launch(best, reason)
            bins.append(new_bin)
            launched += 1
            leftovers = _pack(leftovers, [new_bin])
        waiting: dict[str, int] = {}
        for need in leftovers:
            text = res.describe(need)
            if not self.feasible_somewhere(need):
                if not any(text == d for d, _ in self.decision.infeasible):
                    self.decision.infeasible.append((text, "no node type (and no node) has these resources"))
            else:
                waiting[text] = waiting.get(text, 0) + 1
        for text, count in waiting.items():
            limit_name = "the upscaling_speed limit" if limit is not None and launched >= limit else "max_workers"
            self.decision.waiting.append((f"{text} * {count} ({why})", f"waits: {limit_name} reached"))
        return launched

    def _best_type(self, leftovers: list[res.Resources]) -> str | None:
        wants_gpu = any(n.get("GPU") for n in leftovers)
        best: tuple[Any, ...] | None = None
        choice = None
        for name, t in self.types.items():
            if not self.room_for(name):
                continue
            shape = res.to_fixed(t.resources)
            trial = _Bin(b"trial", dict(shape), name, None)
            rest = _pack(leftovers, [trial])
            packed = len(leftovers) - len(rest)
            if not packed:
                continue
            used = [1 - trial.free.get(k, 0) / v for k, v in shape.items() if v > 0 and not k.startswith("node:")]
            utilization = sum(used) / len(used) if used else 0.0
            score = (not (shape.get("GPU") and not wants_gpu), round(utilization, 6), packed, -_size(shape), name)
            if best is None or score > best:
                best, choice = score, name
        return choice

    # ------------------------------------------------------------ step 5
    def end_idle(self, needed: set[str]) -> None:
        timeout = self.config.idle_timeout_s
        for node in sorted(self.live(), key=lambda n: -n.idle_s):
            if not node.joined or node.idle_s < timeout:
                continue
            t = self.types[node.node_type]
            if node.provider_id in needed:
                self.decision.kept.append((node.provider_id, "queued demand or request_resources bundles fit on it"))
            elif node.holds_objects:
                self.decision.kept.append((node.provider_id, objects_reason(node)))
            elif self.count(node.node_type) <= t.min_workers:
                self.decision.kept.append((node.provider_id, f"its type {node.node_type!r} is at min_workers ({t.min_workers})"))
            else:
                self.end(node, f"idle for {node.idle_s:.0f}s (idle_timeout_minutes: {timeout / 60:g})")
                self.decision.idle.add(node.provider_id)


def objects_reason(node: WorkerNode) -> str:
    """Why an idle node holding objects stays: they exist only there, and are not moved off first."""
    held = [f"{node.objects} object(s) referenced elsewhere"] if node.objects else []
    if node.spilled_bytes:
        held.append(f"{node.spilled_bytes / 2**20:.1f} MiB spilled to its disk")
    return f"holds {' and '.join(held)}; ending it would lose them"


def decide(config: ClusterConfig, nodes: list[WorkerNode], fixed_nodes: list[FixedNode], demand: Demand,
           limits: Limits | None = None) -> Decision:
    """What to launch and end now (see the module's docstring for the order and rules)."""
    planner = _Planner(config, nodes, fixed_nodes, limits or Limits())
    planner.end_broken_and_surplus()
    planner.keep_min_workers()
    needed = planner.satisfy_requests(demand.requested)
    running = len(fixed_nodes) + sum(1 for n in planner.live() if n.joined)
    launching = sum(1 for n in planner.live() if not n.joined) + sum(planner.decision.launch.values())
    budget = max(planner.limits.upscaling_initial_num_nodes, math.ceil(config.upscaling_speed * max(running, 1))) - launching
    used, _ = planner.place_demand(demand, max(0, budget))
    planner.end_idle(needed | used)
    return planner.finish()


def node_type_shapes(types: dict[str, NodeType]) -> list[Shape]:
    """The shapes of the node types (what the autoscaler can add), for feasibility checks."""
    return [dict(t.resources) for t in types.values()]


def _size(shape: res.Resources) -> int:
    return sum(v for k, v in shape.items() if not k.startswith("node:"))


def _sum(shapes: list[res.Resources]) -> res.Resources:
    out: res.Resources = {}
    for shape in shapes:
        res.add(out, shape)
    return out


def _summary(shapes: list[res.Resources]) -> str:
    counts: dict[str, int] = {}
    for shape in shapes:
        counts[res.describe(shape)] = counts.get(res.describe(shape), 0) + 1
    return ", ".join(f"{text} * {n}" for text, n in counts.items())


def _pack(needs: list[res.Resources], bins: list[_Bin]) -> list[res.Resources]:
    """First fit, largest first; returns what did not fit (bins' free room is taken)."""
    leftovers = []
    for need in sorted(needs, key=_size, reverse=True):
        for b in bins:
            if res.fits(need, b.free):
                res.subtract(b.free, need)
                b.used = True
                break
        else:
            leftovers.append(need)
    return leftovers
