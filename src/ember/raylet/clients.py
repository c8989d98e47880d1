"""The core workers connected to this node daemon (drivers and workers), by client id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.protocol import raylet as msg
from ember.raylet.object_store import ObjectStore
from ember.rpc import Connection


class ClientRegistry:
    def __init__(self, store: ObjectStore, client_info: Callable[[], msg.NodeIdentity]) -> None:
        self.store = store
        self.client_info = client_info
        """What a newly registered client learns about this node."""
        self.clients: dict[bytes, Connection] = {}

    def add(self, client_id: bytes, conn: Connection, name: str) -> None:
        conn.state["client_id"] = client_id
        self.store.owner_names[client_id] = name
        self.clients[client_id] = conn

    def forget(self, conn: Connection) -> bytes | None:
        """A connection closed: the client id it registered, if any (no longer listed)."""
        client_id: bytes | None = conn.state.get("client_id")
        if client_id is not None:
            self.clients.pop(client_id, None)
        return client_id

    def __contains__(self, client_id: object) -> bool:
        return client_id in self.clients

    def rpc_register_client(self, conn: Connection, p: msg.RegisterClient) -> msg.NodeIdentity:
        conn.state["address"] = list(p.address) if p.address is not None else None
        conn.state["pid"] = p.pid
        self.add(p.client_id, conn, f"driver pid {p.pid if p.pid is not None else '?'}")
        return self.client_info()

    def rpc_list_clients(self, conn: Connection, p: None) -> list[list[Any]]:
        """Addresses of the core workers on this node (drivers and workers), for inspection tools."""
        out = []
        for client in self.clients.values():
            worker = client.state.get("worker")
            address = worker.address if worker is not None else client.state.get("address")
            if address:
                out.append(address)
        return out

    def driver_pids(self) -> list[int]:
        return [int(c.state["pid"]) for c in self.clients.values() if c.state.get("pid") and "worker" not in c.state]
