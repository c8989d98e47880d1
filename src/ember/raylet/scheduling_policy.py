"""Where a lease request should run: a pure function of the cluster view.

No I/O and no clocks, so every policy is tested without processes.

Policies (Ray's names and knobs):

* hybrid (``"DEFAULT"``): stay on the local node while it is below
  ``spread_threshold`` utilisation and can run the request now; otherwise
  pick at random among the ``top_k`` least-utilised nodes that can run it
  now; if none can run it now, queue where it is feasible (local first).
* ``"SPREAD"``: round-robin over the nodes that can run it now (or that are
  feasible, if none can).
* node affinity: that node; if it is dead or unknown, fail when ``soft`` is
  false, else fall back to hybrid.

Utilisation of a node is that of its most-used resource.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from ember._private import resources as res
from ember._private.placement_policy import round_robin

LOCAL = "local"
SPILLBACK = "spillback"
INFEASIBLE = "infeasible"
UNSCHEDULABLE = "unschedulable"


@dataclass
class NodeView:
    node_id: bytes
    address: list[Any]
    total: res.Resources
    available: res.Resources
    alive: bool = True

    def utilization(self) -> float:
        worst = 0.0
        for name, total in self.total.items():
            if total <= 0 or name.startswith("node:"):
                continue
            used = (total - self.available.get(name, 0)) / total
            worst = max(worst, used)
        return worst


@dataclass
class PolicyConfig:
    spread_threshold: float = 0.5
    top_k_fraction: float = 0.2
    top_k_absolute: int = 1


@dataclass
class Decision:
    kind: str
    node_id: bytes | None = None
    reason: str = ""


@dataclass
class PolicyState:
    #: The node of the last SPREAD decision (the round robin goes on from there).
    spread_last: bytes | None = None
    rng: random.Random = field(default_factory=random.Random)


def decide(
    request: res.Resources,
    strategy: Any,
    local_id: bytes,
    nodes: dict[bytes, NodeView],
    cfg: PolicyConfig,
    state: PolicyState,
) -> Decision:
    alive = [n for n in nodes.values() if n.alive]
    if isinstance(strategy, dict) and strategy.get("type") == "node_affinity":
        target = nodes.get(strategy["node_id"])
        if target is not None and target.alive and res.fits(request, target.total):
            return Decision(LOCAL if target.node_id == local_id else SPILLBACK, target.node_id)
        if not strategy.get("soft"):
            why = "is dead" if target is not None and not target.alive else (
                "cannot fit it" if target is not None else "is not part of the cluster")
            return Decision(UNSCHEDULABLE, None, f"the node {strategy['node_id'].hex()[:12]} named by NodeAffinitySchedulingStrategy(soft=False) {why}")
        strategy = None
    feasible = [n for n in alive if res.fits(request, n.total)]
    if not feasible:
        return Decision(INFEASIBLE)
    ready = [n for n in feasible if res.fits(request, n.available)]
    local = nodes.get(local_id)
    if strategy == "SPREAD":
        # The next node after the last pick, among those with room now (round robin over a
        # set that changes as nodes fill up, join and leave).
        node_id = round_robin((n.node_id for n in ready or feasible), state.spread_last)
        state.spread_last = node_id
        return Decision(LOCAL if node_id == local_id else SPILLBACK, node_id)
    if local is not None and local in ready and local.utilization() < cfg.spread_threshold:
        return Decision(LOCAL, local_id)
    if ready:
        ranked = sorted(ready, key=lambda n: n.utilization())
        k = max(cfg.top_k_absolute, math.ceil(cfg.top_k_fraction * len(alive)))
        top = ranked[: max(1, k)]
        if local is not None and local in top:
            return Decision(LOCAL, local_id)
        choice = state.rng.choice(top)
        return Decision(LOCAL if choice.node_id == local_id else SPILLBACK, choice.node_id)
    if local is not None and local in feasible:
        return Decision(LOCAL, local_id)
    choice = min(feasible, key=lambda n: n.utilization())
    return Decision(SPILLBACK, choice.node_id)
