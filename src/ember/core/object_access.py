"""``put``, ``get`` and ``wait`` for ``CoreWorker``: values in the memory store or the shared-memory store.

Small values live inline in the owner's memory store; large ones are written
to this node's object store (``write_plasma``) and read zero-copy from there,
after pulling them from another node or restoring them from spill if needed.
A read that finds its copy gone raises ``CopyLost`` so lineage can recover it.

"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from ember._private import object_file, serialization
from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember._private.object_ref import ObjectRef, is_counted
from ember.core.links import ClusterLinks, ProcessInfo
from ember.core.memory_store import INLINE, PLASMA, Entry, MemoryStore
from ember.core.ownership_protocol import OwnershipService
from ember.core.task_context import TaskContext
from ember.core.task_manager import ARG_REF, ARG_VALUE
from ember.exceptions import (
    ConnectionLost,
    ErrorCode,
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    RayTaskError,
    RemoteError,
)

logger = logging.getLogger(__name__)


class CopyLost(ObjectLostError):
    """Internal: an object-store copy is gone (node died, file vanished); lineage may recover it."""


class ObjectAccess:
    """put/get/wait and object-store reads and writes."""

    def __init__(self, info: ProcessInfo, links: ClusterLinks, context: TaskContext, store: MemoryStore,
                 ownership: OwnershipService, background: BackgroundTasks) -> None:
        self.info = info
        self.links = links
        self.context = context
        self.store = store
        self.ownership = ownership
        self.counter = ownership.counter
        self.background = background
        self._inline_limit = config().max_direct_call_object_size
        #: Set in a worker: a running task that blocks hands its queued tasks back (see TaskExecutor).
        self.bounce_queued: Callable[[], None] | None = None

    # ================================================================ put / get
    def serialize_value(self, value: Any, what: str) -> serialization.SerializedObject:
        try:
            return serialization.serialize(value)
        except Exception as exc:
            raise TypeError(f"Could not serialize {what} of type {type(value).__name__}: {exc}") from exc

    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("Calling put() on an ObjectRef is not allowed; pass the ref itself instead.")
        obj = self.serialize_value(value, "the value passed to put()")
        object_id = self.context.new_put_id()
        return self._store_put(object_id, obj)

    def _store_put(self, object_id: bytes, obj: serialization.SerializedObject) -> ObjectRef:
        self.counter.add_owned(object_id, self.info.address)
        if obj.nested_refs:
            self.ownership.hold_nested(object_id, obj.nested_refs)
        if obj.total_bytes < self._inline_limit:
            self.store.put(object_id, (INLINE, obj.to_inline()))
        else:
            size = self.write_plasma(object_id, obj, self.info.worker_id, self.info.address)
            self.store.put(object_id, (PLASMA, [self.info.node_id, size, self.info.raylet_location]))
        return ObjectRef(object_id, self.info.address)

    def write_plasma(self, object_id: bytes, obj: serialization.SerializedObject, owner_id: bytes,
                     owner_address: list[Any] | None = None) -> int:
        """Write ``obj`` into this node's object store; returns the file size.

        ``owner_address`` lets the node daemon free the object if its owner (on another node) dies.
        """
        size = object_file.file_size(obj)
        try:
            reply = self.links.raylet_call("create_object", {"object_id": object_id, "size": size, "owner": owner_id,
                                                       "owner_address": owner_address})
        except RemoteError as exc:
            if exc.code is ErrorCode.OBJECT_STORE_FULL:
                raise exc.to_exception() from None
            raise
        fallback = reply.get("path") if isinstance(reply, dict) else None
        path = fallback or os.path.join(self.info.store_dir, object_id.hex())
        if fallback:
            logger.warning(
                "An object of %.1f MiB does not fit in the object store of this node even after spilling; "
                "it is stored in a fallback file on disk (%s), which is slower to write and read. Start the "
                "node with a larger object_store_memory to keep such objects in shared memory.",
                size / 2**20, fallback,
            )
        try:
            object_file.write_object(path, obj, reuse=isinstance(reply, dict) and bool(reply.get("reuse")))
        except FileExistsError:
            pass  # a retried task wrote this return before
        except OSError as exc:
            self.links.loop.call_soon_threadsafe(self.links.raylet.notify, "free_objects", {"object_ids": [object_id]})
            raise ObjectStoreFullError(
                f"Could not write an object of {size} bytes to {os.path.dirname(path)}: {exc}. "
                + ("The fallback disk may be full." if fallback else
                   "The shared-memory file system may be smaller than the configured store.")
            ) from exc
        self.links.loop.call_soon_threadsafe(self.links.raylet.notify, "seal_object", {"object_id": object_id})
        return size

    def encode_return(self, object_id: bytes, value: Any, owner: list[Any], task_id: bytes = b"") -> list[Any]:
        """A task's return value in reply form: inline, or written to the object store.

        Refs inside the value are listed (the caller adopts them) and held here until
        the caller says it has (``release_handoff``).
        """
        obj = self.serialize_value(value, "the return value")
        nested: list[list[Any]] = []
        if obj.nested_refs:
            refs = [r for r in obj.nested_refs if is_counted(r)]
            self.ownership.hold_handoff(task_id, refs, None)
            nested = [[r._id, r._owner] for r in refs]
        if obj.total_bytes < self._inline_limit:
            return [0, obj.to_inline(), nested]
        size = self.write_plasma(object_id, obj, owner[2], owner)
        return [1, [self.info.node_id, size, self.info.raylet_location], nested]

    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any], fname: str) -> tuple[list[Any], list[str], list[bytes]]:
        """Task arguments in wire form, plus the ids of refs the task depends on."""
        wire: list[Any] = []
        ref_ids: list[bytes] = []
        nested_owners: dict[bytes, Any] = {}
        names = list(kwargs)
        values = list(args) + [kwargs[k] for k in names]
        for position, value in enumerate(values):
            if isinstance(value, ObjectRef):
                wire.append([ARG_REF, value._id, value._owner])
                ref_ids.append(value._id)
                continue
            what = (
                f"argument {position} of {fname}()" if position < len(args)
                else f"keyword argument {names[position - len(args)]!r} of {fname}()"
            )
            obj = self.serialize_value(value, what)
            if obj.nested_refs:
                # Held as submitted until the task ends: by then the executor has registered as a borrower.
                for r in obj.nested_refs:
                    if is_counted(r):
                        ref_ids.append(r._id)
                        nested_owners[r._id] = r._owner
            if obj.total_bytes < self._inline_limit:
                wire.append([ARG_VALUE, obj.to_inline()])
            else:
                ref = self._store_put(self.context.new_put_id(), obj)
                wire.append([ARG_REF, ref._id, ref._owner])
                ref_ids.append(ref._id)
        if ref_ids:
            owners = {r[1]: r[2] for r in wire if r[0] == ARG_REF}
            owners.update(nested_owners)
            self.counter.add_submitted(ref_ids, owners.__getitem__)
        return wire, names, ref_ids

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
        import time as _time

        deadline = None if timeout is None else _time.monotonic() + timeout
        recoveries = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - _time.monotonic())
            entries = self._wait_entries(refs, len(refs), remaining)
            try:
                values = [self._value_of(ref._id, entry) for ref, entry in zip(refs, entries)]
                self.ownership.register_borrows()  # refs nested in the values
                return values
            except CopyLost as lost:
                recoveries += 1
                ref = next(r for r in refs if r._id.hex() == lost.object_ref_hex)
                if recoveries > 100:
                    raise
                self._recover(ref)

    def _recover(self, ref: ObjectRef) -> None:
        """A stored copy of ``ref`` is gone: have its owner re-run the task that made it."""
        if self.counter.is_owned(ref._id) or self.info.owns(ref._owner):
            fut: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()

            def start() -> None:
                fut.set_result(self.ownership.reconstruct(ref._id))

            self.links.loop.call_soon_threadsafe(start)
            error = fut.result()
            if error is not None:
                raise error
            return
        reply = self.links.run(self.ownership.ask_owner_to_recover(ref._id, ref._owner))
        if reply is not None:
            _, error = serialization.deserialize_inline(reply)
            raise error
        self.store.delete(ref._id)

    def _wait_entries(self, refs: list[ObjectRef], num: int, timeout: float | None) -> list[Entry | None]:
        self._block_until_ready(refs, num, timeout)
        store = self.store
        return [store.get(r._id) for r in refs]

    def _block_until_ready(self, refs: list[ObjectRef], num: int, timeout: float | None) -> None:
        """Return once ``num`` of ``refs`` have entries here (fetching borrowed ones); raises GetTimeoutError."""
        store = self.store
        missing = [r for r in refs if not store.contains(r._id)]
        if missing:
            for ref in missing:
                if not self.info.owns(ref._owner) and not self.counter.is_owned(ref._id):
                    self.links.loop.call_soon_threadsafe(self.ownership.start_fetch, ref._id, ref._owner)
            wanted = {r._id for r in refs}
            need = min(num, len(wanted))
            blocked = False
            if self.bounce_queued is not None and self.context.current_task_id is not None:
                blocked = True
                self.bounce_queued()
                self.links.loop.call_soon_threadsafe(self.links.raylet.notify, "notify_blocked", None)
            try:
                ready = store.wait(wanted, need, timeout)
            finally:
                if blocked:
                    self.links.loop.call_soon_threadsafe(self.links.raylet.notify, "notify_unblocked", None)
            if len(ready) < need:
                raise GetTimeoutError(
                    f"Get timed out: {need - len(ready)} of {need} object(s) not ready after {timeout}s."
                )

    def _value_of(self, object_id: bytes, entry: Entry | None) -> Any:
        if entry is None:
            raise ObjectLostError(object_id.hex(), f"Object {object_id.hex()} was freed while being read.")
        kind, data = entry
        if kind == INLINE:
            flags, value = serialization.deserialize_inline(data)
        else:
            flags, value = self._read_plasma(object_id, data)
        if flags == serialization.FLAG_ERROR:
            if isinstance(value, RayTaskError):
                raise value.as_instanceof_cause()
            raise value
        return value

    def read_plasma_value(self, object_id: bytes, location: list[Any], raise_errors: bool = True) -> Any:
        flags, value = self._read_plasma(object_id, location)
        if flags == serialization.FLAG_ERROR and raise_errors:
            raise value
        return value

    def _read_plasma(self, object_id: bytes, location: list[Any]) -> tuple[int, Any]:
        node_id = location[0]
        path = os.path.join(self.info.store_dir, object_id.hex())
        if node_id == self.info.node_id and not os.path.exists(path):
            # Spilled to disk: have the node daemon bring it back.
            if not self.links.raylet_call("restore_object", {"object_id": object_id}, timeout=None):
                raise CopyLost(
                    object_id.hex(),
                    f"Object {object_id.hex()} is no longer in the object store of node {node_id.hex()[:12]} "
                    "(it was freed or its node's store was cleared).",
                )
        elif node_id != self.info.node_id and not os.path.exists(path):
            try:
                self.links.raylet_call("pull_object", {"object_id": object_id, "address": location[2], "size": location[1]}, timeout=None)
            except (RemoteError, ConnectionLost) as exc:
                raise CopyLost(
                    object_id.hex(),
                    f"Object {object_id.hex()} could not be fetched from node {node_id.hex()[:12]} "
                    f"at {location[2][0]}:{location[2][1]}: {exc}",
                ) from None
        for _attempt in range(3):
            try:
                return object_file.read_object(path)
            except FileNotFoundError:
                # Spilled between our check and the read: bring it back and try again.
                if node_id != self.info.node_id or not self.links.raylet_call("restore_object", {"object_id": object_id}, timeout=None):
                    break
        raise CopyLost(
            object_id.hex(),
            f"Object {object_id.hex()} is no longer in the object store of node {node_id.hex()[:12]} "
            "(it was freed or its node's store was cleared).",
        )

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None, fetch_local: bool) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """(ready, not ready). A ref is ready once its value or location is known here;
        ``fetch_local`` is accepted as in Ray, and a value on another node is pulled when read."""
        ready, not_ready = self._split_ready(refs, num_returns)
        if len(ready) == num_returns:
            return ready, not_ready
        try:
            self._block_until_ready(refs, num_returns, timeout)
        except GetTimeoutError:
            pass
        return self._split_ready(refs, num_returns)

    def _split_ready(self, refs: list[ObjectRef], num_returns: int) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """(the first ``num_returns`` refs with a value here, the rest), each in the order given."""
        contains = self.store.contains
        ready: list[ObjectRef] = []
        not_ready: list[ObjectRef] = []
        for ref in refs:
            if len(ready) < num_returns and contains(ref._id):
                ready.append(ref)
            else:
                not_ready.append(ref)
        return ready, not_ready

    def get_future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def on_entry(entry: Entry) -> None:
            if future.done():
                return
            try:
                future.set_result(self._value_of(ref._id, entry))
            except BaseException as exc:
                future.set_exception(exc)

        def register() -> None:
            self.ownership.resolve_entry(ref._id, ref._owner, on_entry)
            # keep the ref alive until it resolves
            def hold(_: concurrent.futures.Future[Any], held: ObjectRef = ref) -> None:
                del held

            future.add_done_callback(hold)

        self.links.loop.call_soon_threadsafe(register)
        return future

    def object_from_coroutine(self, make_coro: Callable[[], Awaitable[Any]]) -> ObjectRef:
        """An owned ObjectRef resolved with the result (or error) of ``make_coro()`` run on the loop."""
        object_id = self.context.new_put_id()
        self.counter.add_owned(object_id, self.info.address)
        ref = ObjectRef(object_id, self.info.address)

        async def run() -> None:
            try:
                value = await make_coro()
                entry: Entry = (INLINE, serialization.serialize(value).to_inline())
            except Exception as exc:
                entry = (INLINE, serialization.serialize_error(exc).to_inline())
            self.ownership.store_owned_result(object_id, entry)

        self.links.loop.call_soon_threadsafe(
            lambda: self.background.spawn_if_open(run(), "store an awaited result", loop=self.links.loop))
        return ref

