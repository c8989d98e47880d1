"""This node daemon's view of the cluster: the other nodes, their resources, the dead ones.

Refreshed by every load report's answer and at once by the control service's
``nodes`` channel (joins and deaths); read by the placement policy
(``scheduling_policy.decide``) when a lease request arrives or waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ember._private import resources as res
from ember.protocol.gcs import Publication
from ember.raylet import scheduling_policy as policy
from ember.raylet.node import NodeContext


class ClusterView:
    def __init__(
        self,
        node: NodeContext,
        cfg: policy.PolicyConfig,
        on_change: Callable[[], None],
        on_node_death: Callable[[tuple[str, int]], None],
    ) -> None:
        self.node = node
        self.cfg = cfg
        self.state = policy.PolicyState()
        #: Live nodes as the last report (or node event) showed them, this one included.
        self.nodes: dict[bytes, policy.NodeView] = {}
        #: Nodes this daemon heard die (kept so node affinity to one says "is dead").
        self.dead: dict[bytes, policy.NodeView] = {}
        self._on_change = on_change
        self._on_node_death = on_node_death
        #: Set when the node at that address is heard dead (pulls from it wait on these).
        self._deaths: dict[tuple[str, int], asyncio.Event] = {}

    def update(self, rows: list[list[Any]], total: res.Resources, available: res.Resources) -> None:
        """The control service's answer to a load report: ``[node_id, address, total, available]`` rows."""
        nodes: dict[bytes, policy.NodeView] = {}
        for node_id, address, node_total, node_available in rows:
            nodes[node_id] = policy.NodeView(node_id, address, res.to_fixed(node_total), res.to_fixed(node_available))
        nodes[self.node.node_id] = policy.NodeView(self.node.node_id, self.node.address, total, available)
        self.nodes = nodes

    def with_local(self, total: res.Resources, committed_available: res.Resources) -> dict[bytes, policy.NodeView]:
        """The view the policy decides on: this node as it will be once its queue is granted, dead nodes included."""
        view = dict(self.nodes)
        view[self.node.node_id] = policy.NodeView(self.node.node_id, self.node.address, total, committed_available)
        for node_id, dead in self.dead.items():
            view.setdefault(node_id, dead)
        return view

    def decide(self, request: res.Resources, strategy: Any, view: dict[bytes, policy.NodeView]) -> policy.Decision:
        return policy.decide(request, strategy, self.node.node_id, view, self.cfg, self.state)

    def is_dead_address(self, address: list[Any]) -> bool:
        return any(list(dead.address[:2]) == list(address[:2]) for dead in self.dead.values())

    def death_of(self, address: list[Any]) -> asyncio.Event:
        """An event set when the node at ``address`` is heard dead."""
        key = (address[0], int(address[1]))
        event = self._deaths.get(key)
        if event is None:
            event = self._deaths[key] = asyncio.Event()
        return event

    def rpc_pub(self, conn: Any, message: Publication) -> None:
        """A node joined or died (the control service's ``nodes`` channel): update the view now.

        Otherwise a node that just joined is unknown here until the next report, and
        node affinity to it fails with "not part of the cluster".
        """
        channel, data = message.channel, message.data
        if channel != "nodes":
            return
        node_id = bytes.fromhex(data["NodeID"])
        if node_id == self.node.node_id:
            return
        address = [data["NodeManagerAddress"], data["NodeManagerPort"]]
        if data.get("Alive"):
            self.dead.pop(node_id, None)
            if node_id not in self.nodes:
                total = res.to_fixed(data["Resources"])
                self.nodes[node_id] = policy.NodeView(node_id, address, total, dict(total))
                self._on_change()
        else:
            self.dead[node_id] = policy.NodeView(node_id, address, {}, {}, alive=False)
            event = self._deaths.pop((address[0], int(address[1])), None)
            if event is not None:
                event.set()
            self._on_node_death((address[0], address[1]))
            if self.nodes.pop(node_id, None) is not None:
                self._on_change()
