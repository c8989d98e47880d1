"""What every component of the node daemon knows about the node it runs on.

One ``NodeContext`` is made by ``Raylet`` and handed to each component: the
node's identity and addresses, the cluster token, whether the daemon is
stopping, and the ``BackgroundTasks`` that own every asyncio task the
components start (cancelled and awaited when the daemon stops).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ember._private.background import BackgroundTasks


@dataclass
class NodeContext:
    node_id: bytes
    node_ip: str
    session_dir: str
    gcs_address: str
    token: str
    is_head: bool = False
    #: ``[ip, port]`` of this daemon's RPC server (set once it listens).
    address: list[Any] = field(default_factory=list)
    #: Set first thing in ``Raylet.stop``: late events are ignored from then on.
    stopping: bool = False
    background: BackgroundTasks = field(default_factory=lambda: BackgroundTasks("node daemon"))

    @property
    def short_id(self) -> str:
        return self.node_id.hex()[:12]

    @property
    def label(self) -> str:
        """How messages name this node: ``<id> (<ip>)``."""
        return f"{self.short_id} ({self.node_ip})"
