"""Moving objects between nodes.

A worker that needs an object stored on another node asks its own node
daemon to *pull* it. The daemon reserves room, then fetches the file from
the node that holds it in chunks (several in flight, bounded), writes a
local copy and seals it. Several pulls run at once; a second request for an
object already being pulled waits for the first.

The node that holds the primary copy remembers which nodes copied it, so
that freeing the primary frees every copy.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from ember._private.config import config
from ember.exceptions import ObjectLostError, RemoteError
from ember.raylet.object_store import ObjectStore
from ember.raylet.object_transfer import PARALLEL_STREAMS, pull_object
from ember.rpc import Connection

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024
CHUNKS_IN_FLIGHT = 4
MAX_CONCURRENT_PULLS = 8


class ObjectManager:
    def __init__(
        self,
        store: ObjectStore,
        node_id: bytes,
        connect_raylet: Callable[[list[Any]], Awaitable[Connection]],
        token: str,
        allocate: Callable[[bytes, int, bytes, bool], Awaitable[tuple[bool, str | None]]],
    ) -> None:
        #: Room for a copy: in the store (spilling if needed) or a fallback file (see ObjectService).
        self.allocate = allocate
        import concurrent.futures

        self._token = token
        self._pool = concurrent.futures.ThreadPoolExecutor(PARALLEL_STREAMS * 2, thread_name_prefix="ember-pull")
        self.store = store
        self.node_id = node_id
        self._connect = connect_raylet
        self._pulls: dict[bytes, asyncio.Future[None]] = {}
        self._pull_slots = asyncio.Semaphore(MAX_CONCURRENT_PULLS)
        #: object id -> addresses of node daemons that hold a copy we served.
        self.copies: dict[bytes, list[list[Any]]] = {}
        #: object id -> (host, port) of the node daemon a local secondary copy was pulled from.
        self.sources: dict[bytes, tuple[str, int]] = {}
        self._read_fds: dict[bytes, int] = {}

    # ================================================================ pulling
    async def pull(self, object_id: bytes, source: list[Any], size: int, owner: bytes) -> None:
        if self.store.contains(object_id):
            return
        pending = self._pulls.get(object_id)
        if pending is not None:
            await asyncio.shield(pending)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pulls[object_id] = fut
        try:
            async with self._pull_slots:
                await self._transfer(object_id, source, size, owner)
            fut.set_result(None)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        finally:
            self._pulls.pop(object_id, None)

    async def _transfer(self, object_id: bytes, source: list[Any], size: int, owner: bytes) -> None:
        conn = await self._connect(source)
        transfer_port = conn.peer_info.get("transfer_port")
        await conn.call("prepare_transfer", {"object_id": object_id}, timeout=config().object_transfer_prepare_timeout_s)
        _, fallback_path = await self.allocate(object_id, size, owner, False)
        path = fallback_path or self.store.path(object_id)
        part = path + ".part"
        try:
            if not transfer_port:
                raise ObjectLostError(object_id.hex(), f"node daemon {source} has no transfer port")
            await asyncio.get_running_loop().run_in_executor(
                None, pull_object, self._pool, (source[0], int(transfer_port)), self._token, object_id, size, part
            )
            os.replace(part, path)
        except BaseException as exc:
            try:
                os.unlink(part)
            except OSError:
                pass
            self.store.drop_memory_copy(object_id)
            if isinstance(exc, RemoteError):
                raise ObjectLostError(object_id.hex(), f"Could not copy object {object_id.hex()}: {exc.message}") from exc
            if isinstance(exc, ObjectLostError):
                raise
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ObjectLostError(
                object_id.hex(), f"Could not copy object {object_id.hex()} from node daemon {source[0]}:{source[1]}: {exc}"
            ) from exc
        self.store.seal(object_id)
        self.sources[object_id] = (source[0], int(source[1]))
        conn.notify("copy_made", {"object_id": object_id, "address": None})

    # ================================================================ serving
    def read_chunk(self, object_id: bytes, offset: int, length: int) -> bytes:
        if not self.store.contains(object_id):
            raise ObjectLostError(object_id.hex(), f"object {object_id.hex()} is not on this node")
        fd = self._read_fds.get(object_id)
        if fd is None:
            fd = os.open(self.store.path(object_id), os.O_RDONLY)
            self._read_fds[object_id] = fd
        data = os.pread(fd, length, offset)
        if offset + length >= self.store.objects[object_id].size:
            self._close_fd(object_id)
        return data

    def copy_made(self, object_id: bytes, address: list[Any]) -> None:
        self.copies.setdefault(object_id, []).append(address)

    def on_free(self, object_id: bytes) -> list[list[Any]]:
        """Forget an object; returns the node daemons that hold copies to free too."""
        self._close_fd(object_id)
        self.sources.pop(object_id, None)
        return self.copies.pop(object_id, [])

    def _close_fd(self, object_id: bytes) -> None:
        fd = self._read_fds.pop(object_id, None)
        if fd is not None:
            os.close(fd)
