"""The node's objects as an RPC service: creating, sealing, freeing, restoring and pulling objects.

Owns the store's accounting (``object_store.py``), the spiller, the object
manager (pulls between nodes) and the connections to other node daemons. Also
watches owners on other nodes whose objects are stored here, so those objects
are freed when their owner dies.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ember._private.config import config
from ember.exceptions import ConnectionLost, ObjectLostError, ObjectStoreFullError
from ember.protocol import raylet as msg
from ember.raylet.clients import ClientRegistry
from ember.raylet.cluster_view import ClusterView
from ember.raylet.lease_table import expected
from ember.raylet.node import NodeContext
from ember.raylet.object_manager import ObjectManager
from ember.raylet.object_store import ObjectStore, fmt_bytes
from ember.raylet.spilling import Spiller
from ember.rpc import Connection, connect

logger = logging.getLogger(__name__)

#: Tries to connect to an owner on another node before giving up on watching it.
OWNER_WATCH_ATTEMPTS = 8


class RayletPeers:
    """One connection to each other node daemon this one talks to (pulls, remote frees)."""

    def __init__(self, node: NodeContext, handlers: object) -> None:
        self.node = node
        self._handlers = handlers
        self._peers: dict[tuple[str, int], asyncio.Future[Connection]] = {}

    async def connect(self, address: list[Any]) -> Connection:
        key = (address[0], address[1])
        fut = self._peers.get(key)
        if fut is not None and fut.done() and (fut.exception() is not None or fut.result().closed):
            fut = None
        if fut is None:
            fut = asyncio.ensure_future(connect(key, self.node.token, self._handlers,
                                                info={"role": "raylet", "address": self.node.address}))
            self._peers[key] = fut
        return await asyncio.shield(fut)

    def close(self) -> None:
        """Cancel the connections being made and close the open ones (the daemon stops)."""
        for fut in self._peers.values():
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled() and fut.exception() is None:
                fut.result().close("node daemon stopping")
        self._peers.clear()


class ObjectService:
    def __init__(self, node: NodeContext, store: ObjectStore, spiller: Spiller, peers: RayletPeers,
                 clients: ClientRegistry, view: ClusterView) -> None:
        self.node = node
        self.store = store
        self.spiller = spiller
        self.peers = peers
        self.clients = clients
        self.view = view
        self.objects = ObjectManager(store, node.node_id, peers.connect, node.token, self.allocate_object)
        #: Owners on other nodes of objects stored here: a connection to each, to learn of its death.
        self._owner_watches: dict[bytes, asyncio.Task[None]] = {}
        self._owner_conns: dict[bytes, Connection] = {}

    def sealed_path(self, object_id: bytes) -> str | None:
        """A local file holding the sealed object (in the store or spilled), for the transfer server."""
        if self.store.contains(object_id):
            return self.store.path(object_id)
        return self.spiller.local_spill_path(object_id)

    def stop(self) -> None:
        self.peers.close()
        for conn in list(self._owner_conns.values()):
            conn.close("node daemon stopping")
        self._owner_conns.clear()
        self.store.destroy()
        self.spiller.stop()

    # ================================================================ RPC: objects
    async def rpc_create_object(self, conn: Connection, p: msg.CreateObject) -> msg.CreateObjectReply:
        size, owner = p.size, p.owner
        if size < 0 or len(p.object_id) != 20:
            raise ValueError(f"bad create_object request: size {size}, object id {p.object_id!r}")
        reuse, fallback_path = await self.allocate_object(p.object_id, size, owner)
        if p.owner_address and owner not in self.clients and owner not in self._owner_watches:
            self._owner_watches[owner] = self.node.background.spawn(
                self._watch_owner(owner, list(p.owner_address)), "watch an object owner"
            )
        if fallback_path is not None:
            return msg.CreateObjectReply(reuse=False, path=fallback_path)
        return msg.CreateObjectReply(reuse=reuse)

    async def allocate_object(self, object_id: bytes, size: int, owner: bytes, primary: bool = True) -> tuple[bool, str | None]:
        """Room for a new object: in the store (spilling others first if needed), else in a
        fallback file on disk. Returns (a recycled file is at its path, the fallback path or None).

        Raises:
            ObjectStoreFullError: neither the store nor the disk can take it.
        """
        store = self.store
        try:
            if store.used + size > store.capacity:
                await self.spiller.make_room(size)
            return store.reserve(object_id, size, owner, primary), None
        except ObjectStoreFullError as exc:
            why_not = store.fallback_room(size)
            if why_not:
                raise expected(ObjectStoreFullError(
                    f"{exc} It cannot go to a fallback file on disk either: {why_not}.")) from None
        path = store.reserve_fallback(object_id, size, owner, primary)
        logger.warning(
            "object %s of %s does not fit in the object store (%s of %s used after spilling): "
            "fallback allocation to %s (on disk: slower than shared memory)",
            object_id.hex(), fmt_bytes(size), fmt_bytes(store.used), fmt_bytes(store.capacity), path,
        )
        return False, path

    async def _watch_owner(self, owner: bytes, address: list[Any]) -> None:
        """An owner on another node: its objects here are freed when it dies (the connection drops)."""
        conn = await self._connect_owner(owner, address)
        if conn is None:
            return
        self._owner_conns[owner] = conn
        conn.add_close_callback(lambda c: self._owner_gone(owner))

    async def _connect_owner(self, owner: bytes, address: list[Any]) -> Connection | None:
        """A connection to a live owner; None (and its objects freed) if it is gone."""
        delay = 0.1
        failure: Exception | None = None
        for _ in range(OWNER_WATCH_ATTEMPTS):
            try:
                return await connect((address[0], address[1]), self.node.token, None, info={"role": "raylet"},
                                     timeout=config().owner_watch_connect_timeout_s, retry=False)
            except ConnectionLost as exc:
                # A core worker listens before its address is handed out: a refusal means it is gone.
                if isinstance(exc.__cause__, ConnectionRefusedError):
                    self._owner_gone(owner)
                    return None
                # Reset or closed mid-handshake: often an owner dying right now. Look again (the
                # next try is refused if it is gone), unless it has nothing here any more.
                failure = exc
            except Exception as exc:  # e.g. a wrong token: keep the objects, watch again at the next create
                failure = exc
                break
            if not self.store.holds_owner(owner):
                failure = None
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, config().owner_watch_max_backoff_s)
        self._owner_watches.pop(owner, None)
        if failure is not None:
            logger.warning("cannot watch owner %s at %s (its objects here stay until it frees them): %s",
                           owner.hex()[:12], address, failure)
        return None

    def _owner_gone(self, owner: bytes) -> None:
        self._owner_watches.pop(owner, None)
        self._owner_conns.pop(owner, None)
        if not self.node.stopping and owner not in self.clients:
            self.free_owned(owner)

    def free_owned(self, owner: bytes) -> None:
        """Free every object (in memory, spilled, and the copies on other nodes) of an owner that died."""
        oids = [oid for oid, e in self.store.objects.items() if e.owner == owner]
        oids += [oid for oid, e in self.store.spilled.items() if e.owner == owner and oid not in oids]
        if oids:
            logger.info("freeing %d object(s) of owner %s, which died", len(oids), owner.hex()[:12])
            self.free(oids)

    def close_idle_owner_watches(self) -> None:
        if not self._owner_conns:
            return
        owners = {e.owner for e in self.store.objects.values()} | {e.owner for e in self.store.spilled.values()}
        for owner, conn in list(self._owner_conns.items()):
            if owner not in owners:
                del self._owner_conns[owner]
                self._owner_watches.pop(owner, None)
                conn.close("no objects of this owner left here")

    def rpc_seal_object(self, conn: Connection, p: msg.ObjectId) -> None:
        self.store.seal(p.object_id)
        self.spiller.after_seal()

    async def rpc_restore_object(self, conn: Connection, p: msg.ObjectId) -> bool:
        """Make a spilled object readable in memory again; False if this node does not have it."""
        return await self.spiller.restore(p.object_id)

    async def rpc_prepare_transfer(self, conn: Connection, p: msg.ObjectId) -> bool:
        """Before another node streams an object from us: make sure there is a local file to send."""
        object_id = p.object_id
        if self.sealed_path(object_id) is not None:
            return True
        if await self.spiller.restore(object_id):
            return True
        raise expected(ObjectLostError(object_id.hex(), f"object {object_id.hex()} is not on node {self.node.short_id}"))

    def rpc_free_objects(self, conn: Connection | None, p: msg.ObjectIds) -> None:
        self.free(p.object_ids)

    def free(self, object_ids: list[bytes]) -> None:
        """Free objects here, their spill files, and the copies other nodes made of them."""
        by_copy: dict[tuple[str, int], list[bytes]] = {}
        for oid in object_ids:
            url = self.store.free(oid)
            if url:
                self.spiller.delete(url)
            for address in self.objects.on_free(oid):
                by_copy.setdefault((address[0], address[1]), []).append(oid)
        for (host, port), oids in by_copy.items():
            self.node.background.spawn_if_open(self._free_remote([host, port], oids), "free remote copies")

    async def _free_remote(self, address: list[Any], object_ids: list[bytes]) -> None:
        try:
            conn = await self.peers.connect(address)
            conn.notify("free_objects", {"object_ids": object_ids})
        except Exception as exc:
            logger.debug("could not free copies on %s: %s", address, exc)

    async def rpc_pull_object(self, conn: Connection, p: msg.PullObject) -> bool:
        source = p.address
        dead = expected(ObjectLostError(p.object_id.hex(), f"the node at {source[0]}:{source[1]} that held it is dead"))
        if self.view.is_dead_address(source):
            # Fail at once (the owner rebuilds it from lineage) instead of retrying a
            # connection to a dead daemon for connect_timeout_s.
            raise dead
        # The news of its death may come while we pull (the caller can learn it first):
        # then stop retrying the connection and fail at once too.
        pull = asyncio.ensure_future(self.objects.pull(p.object_id, source, p.size, p.owner or b""))
        death = asyncio.ensure_future(self.view.death_of(source).wait())
        try:
            await asyncio.wait([pull, death], return_when=asyncio.FIRST_COMPLETED)
        finally:
            death.cancel()
            if not pull.done():
                pull.cancel()
        if pull.cancelled() or not pull.done():
            raise dead
        pull.result()
        return True

    def rpc_read_object_chunk(self, conn: Connection, p: msg.ReadObjectChunk) -> bytes:
        return self.objects.read_chunk(p.object_id, p.offset, p.length)

    def rpc_copy_made(self, conn: Connection, p: msg.CopyMade) -> None:
        object_id = p.object_id
        if object_id not in self.store.objects and object_id not in self.store.spilled:
            # Freed here while the other node was copying it: nobody would free that copy.
            conn.notify("free_objects", {"object_ids": [object_id]})
            return
        address = conn.peer_info.get("address")
        if address:
            self.objects.copy_made(object_id, address)

    def rpc_store_stats(self, conn: Connection, p: None) -> dict[str, int]:
        return self.store.stats()

    def node_died(self, address: tuple[str, int]) -> None:
        """Copies pulled from a dead node's primaries: nobody will free them (the owner's record
        points at the dead node, and a reconstructed primary does not know them)."""
        orphans = [oid for oid, src in self.objects.sources.items() if src == address]
        if orphans:
            self.free(orphans)

