"""The owner's and the borrower's side of reference counting.

An owner frees an object's copies once nothing references it (including the
copies a dead task attempt may have left), keeps the refs nested in stored
values and task results alive until their receivers have registered, and
answers borrowers. A borrower registers with the owner before it uses a ref
and deregisters when its count drops to zero; it fetches values from owners
and asks them to recover lost ones (lineage reconstruction).

``OwnershipService`` owns the ``ReferenceCounter`` and everything an owner holds
on behalf of others (contained refs, hand-offs, copies of dead attempts); it
reaches other processes only through ``ClusterLinks``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from ember._private import ids, serialization
from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember._private.object_ref import ObjectRef, is_counted
from ember.core.links import ClusterLinks, ProcessInfo
from ember.core.memory_store import INLINE, PLASMA, Entry, MemoryStore
from ember.core.reference_counter import ReferenceCounter, RefState
from ember.exceptions import (
    ConnectionLost,
    ObjectLostError,
    OwnerDiedError,
    RemoteError,
)
from ember.protocol import core_worker as msg
from ember.rpc import Connection

logger = logging.getLogger(__name__)


def _no_lineage(object_id: bytes) -> BaseException | None:
    return ObjectLostError(object_id.hex(), f"Object {object_id.hex()} was lost and cannot be recovered here.")


class OwnershipService:
    """Owner and borrower halves of reference counting, and fetching values from owners."""

    def __init__(self, info: ProcessInfo, links: ClusterLinks, store: MemoryStore, background: BackgroundTasks) -> None:
        self.info = info
        self.links = links
        self.store = store
        self.background = background
        self.counter = ReferenceCounter(self._on_free, self._wake_drain, info.worker_id)
        #: Lineage hooks (set by the task manager's owner): an owned object was freed; re-make a lost one.
        self.on_owned_freed: Callable[[bytes], None] = lambda object_id: None
        self.reconstruct: Callable[[bytes], BaseException | None] = _no_lineage
        #: Refs held on behalf of stored values that contain them (object id -> refs).
        self._contained: dict[bytes, list[ObjectRef]] = {}
        #: Refs inside task results we sent, held until the caller has taken them over.
        self._handoffs: dict[bytes, list[Any]] = {}
        self._pending_unborrows: list[tuple[bytes, Any]] = []
        self._registrations: dict[bytes, list[asyncio.Task[None]]] = {}
        self._pending_frees: list[tuple[bytes, Any]] = []
        #: Results of task attempts whose worker died: the nodes where a copy may have been
        #: stored anyway (the worker's last messages can reach its node after the owner's
        #: first free). Freed there again when the owner frees the object.
        self._dead_attempt_copies: dict[bytes, set[tuple[str, int]]] = {}
        self._fetching: set[bytes] = set()
        self._auto_destroy_actors: set[bytes] = set()
        self._creation_args: dict[bytes, list[bytes]] = {}

    def _wake_drain(self) -> None:
        self.links.loop.call_soon_threadsafe(self.counter.drain)

    # ================================================================ ownership
    def register_owned_actor(self, actor_id: bytes, auto_destroy: bool, creation_arg_ids: list[bytes] | None = None) -> None:
        """Count handles of an actor we created; its constructor's ref arguments stay held
        (restarts run __init__ again with them) until it is dead for good."""
        self.counter.add_owned(actor_id, self.info.address)
        if auto_destroy:
            self._auto_destroy_actors.add(actor_id)
        if creation_arg_ids:
            self._creation_args[actor_id] = list(creation_arg_ids)

    def release_creation_args(self, actor_id: bytes) -> None:
        arg_ids = self._creation_args.pop(actor_id, None)
        if arg_ids:
            self.counter.remove_submitted(arg_ids)

    def _on_free(self, object_id: bytes, state: RefState) -> None:
        if len(object_id) == ids.UNIQUE_ID_LEN:  # an actor handle count
            if not state.owned and state.registered and state.owner is not None:
                self._queue_unborrow(object_id, state.owner)
            if state.owned and object_id in self._auto_destroy_actors:
                self._auto_destroy_actors.discard(object_id)
                self.release_creation_args(object_id)
                payload = {"actor_id": object_id, "no_restart": True,
                           "cause": "all references to it were deleted"}
                try:
                    self.links.loop.call_soon_threadsafe(self.links.notify_gcs, "kill_actor", payload)
                except RuntimeError:
                    pass
            return
        entry = self.store.delete(object_id)
        self._contained.pop(object_id, None)
        if state.owned and entry is not None and entry[0] == PLASMA:
            self._free_plasma(object_id, entry[1])
        if state.owned and self._dead_attempt_copies:
            self._free_dead_attempt_copies(object_id)
        if not state.owned and state.registered and state.owner is not None:
            self._queue_unborrow(object_id, state.owner)
        if state.owned:
            try:
                self.links.loop.call_soon_threadsafe(self.on_owned_freed, object_id)
            except RuntimeError:
                pass

    # ================================================================ borrowing
    def _batch(self, pending: list[Any], item: Any, flush: Any) -> None:
        """Queue ``item`` (from any thread); the first of a batch schedules ``flush`` on the loop."""
        pending.append(item)
        if len(pending) == 1:
            try:
                self.links.loop.call_soon_threadsafe(flush)
            except RuntimeError:
                pass  # the loop is closed: the process is exiting

    def _queue_unborrow(self, object_id: bytes, owner: Any) -> None:
        self._batch(self._pending_unborrows, (object_id, owner), self._flush_unborrows)

    def _flush_unborrows(self) -> None:
        pending, self._pending_unborrows = self._pending_unborrows, []
        for owner, object_ids in _by_address(pending):
            # Late (the process is shutting down): the owner drops a gone borrower's borrows itself.
            self.background.spawn_if_open(self._unborrow(owner, object_ids), "unborrow", loop=self.links.loop)

    async def _unborrow(self, owner: Any, object_ids: list[bytes]) -> None:
        try:
            conn = await self.links.connect_to(owner)
            conn.notify("remove_borrowers", {"object_ids": object_ids})
        except (ConnectionLost, OSError):
            pass  # the owner is gone: nothing to release

    def register_borrows(self) -> None:
        """Tell owners about refs this process received, before it uses them.

        Synchronous from user threads (so an owner can never free a value a
        borrower is about to read); from the I/O loop it is only started.
        """
        new = self.counter.take_new_borrows()
        if not new:
            return
        self.counter.mark_registered(oid for oid, _ in new)
        if self.links.in_loop_thread():
            self.background.spawn_if_open(self._register(new), "register as borrower", loop=self.links.loop)
        elif self.links.io is not None:
            self.links.run(self._register(new))

    async def _register(self, borrows: list[tuple[bytes, Any]]) -> None:
        async def one(owner: Any, object_ids: list[bytes]) -> None:
            try:
                conn = await self.links.connect_to(owner)
                missing = await conn.call("add_borrowers", {"object_ids": object_ids},
                                         timeout=config().borrower_registration_timeout_s)
            except (ConnectionLost, OSError) as exc:
                for object_id in object_ids:
                    if len(object_id) != ids.UNIQUE_ID_LEN and not self.store.contains(object_id):
                        error = OwnerDiedError(
                            object_id.hex(),
                            f"The owner of object {object_id.hex()} (worker {owner[2].hex()[:12]} at {owner[0]}:{owner[1]}) "
                            f"is unreachable ({exc}), so the object is lost.",
                        )
                        self.store.put(object_id, (INLINE, serialization.serialize_error(error).to_inline()))
                return
            for object_id in missing:
                if len(object_id) == ids.UNIQUE_ID_LEN:
                    continue  # an actor already destroyed: its calls say so
                lost = ObjectLostError(object_id.hex(), f"Object {object_id.hex()} was already freed by its owner.")
                self.store.put(object_id, (INLINE, serialization.serialize_error(lost).to_inline()))

        await asyncio.gather(*(one(owner, oids) for owner, oids in _by_address(borrows)))

    def rpc_add_borrowers(self, conn: Connection, p: msg.ObjectIds) -> list[bytes]:
        key = id(conn)
        if not conn.state.get("borrower"):
            conn.state["borrower"] = True
            conn.add_close_callback(lambda c: self.counter.drop_borrower(id(c)))
        return self.counter.add_borrowers(p.object_ids, key)

    def rpc_remove_borrowers(self, conn: Connection, p: msg.ObjectIds) -> None:
        self.counter.remove_borrowers(p.object_ids, id(conn))

    def adopt_nested(self, object_id: bytes, nested: list[list[Any]], holder: Connection | None, task_id: bytes) -> None:
        """On the loop: a result we own contains these refs; hold them while it lives.

        Registrations with their owners are recorded under ``task_id`` so that the
        sender's hold is released only after they are done."""
        refs = [ObjectRef(oid, owner) for oid, owner in nested]
        self._contained.setdefault(object_id, []).extend(refs)
        new = self.counter.take_new_borrows()
        if new:
            self.counter.mark_registered(oid for oid, _ in new)
            task = self.background.spawn_if_open(self._register(new), "register as borrower", loop=self.links.loop)
            if task is not None:
                self._registrations.setdefault(task_id, []).append(task)

    def hold_nested(self, object_id: bytes, nested: list[Any]) -> None:
        """Keep refs contained in a stored value alive while it lives."""
        # Own copies: each adds a local count that lasts exactly as long as the value
        # (an actor handle's count is held the same way, by an ObjectRef of its id).
        refs = [ObjectRef(r._id, r._owner) for r in nested if is_counted(r)]
        if refs:
            self._contained.setdefault(object_id, []).extend(refs)

    def rpc_release_handoff(self, conn: Connection, p: msg.TaskId) -> None:
        self._handoffs.pop(p.task_id, None)

    def hold_handoff(self, task_id: bytes, refs: list[Any], conn: Connection | None) -> None:
        self._handoffs.setdefault(task_id, []).extend(refs)

    def note_dead_attempt(self, return_ids: list[bytes], node_address: list[Any] | None) -> None:
        """On the loop: an attempt that ran on the node at ``node_address`` died.

        Its results may have been stored there anyway: they are freed there now, and again
        when this owner frees the objects (the dead worker's last messages can reach its
        node after the first free).
        """
        if not isinstance(node_address, (list, tuple)) or len(node_address) < 2:
            return
        address = (node_address[0], node_address[1])
        for oid in return_ids:
            self._free_at(oid, address)
            self._dead_attempt_copies.setdefault(oid, set()).add(address)

    def _free_dead_attempt_copies(self, object_id: bytes) -> None:
        for address in self._dead_attempt_copies.pop(object_id, ()):
            self._free_at(object_id, address)

    def _free_plasma(self, object_id: bytes, location: list[Any]) -> None:
        """Free an object-store value at its location ([node id, size, node daemon address])."""
        self._free_at(object_id, location[2])

    def _free_at(self, object_id: bytes, address: Any) -> None:
        """Free ``object_id`` in the store of the node daemon at ``address`` (host, port)."""
        self._batch(self._pending_frees, (object_id, address), self._flush_frees)

    def _flush_frees(self) -> None:
        frees, self._pending_frees = self._pending_frees, []
        for address, object_ids in _by_address(frees):
            if list(address[:2]) == list(self.info.raylet_location):
                if self.links.raylet_connected:
                    self.links.raylet.notify("free_objects", {"object_ids": object_ids})
            else:
                # Late (the process is shutting down): that node frees a gone owner's objects itself.
                self.background.spawn_if_open(self._free_remote(list(address[:2]), object_ids), "free remote copies",
                                              loop=self.links.loop)

    async def _free_remote(self, address: list[Any], object_ids: list[bytes]) -> None:
        try:
            conn = await self.links.connect_to(address)
            conn.notify("free_objects", {"object_ids": object_ids})
        except (ConnectionLost, OSError) as exc:
            logger.debug("could not free objects on %s: %s", address, exc)

    def store_owned_result(self, object_id: bytes, entry: Entry) -> None:
        """Record a task result; called on the loop when the reply arrives."""
        if not self.counter.has_reference(object_id):
            # Nobody holds a ref any more: drop the value at once.
            if entry[0] == PLASMA:
                self._free_plasma(object_id, entry[1])
            if self._dead_attempt_copies:
                self._free_dead_attempt_copies(object_id)
            return
        self.store.put(object_id, entry)

    def store_results(self, task_id: bytes, return_ids: list[bytes], returns: list[Any], sender: Connection | None) -> None:
        """On the loop: record a finished task's results and adopt the refs nested in them."""
        nested_any = False
        for oid, ret in zip(return_ids, returns):
            entry: Entry = (INLINE, ret[1]) if ret[0] == 0 else (PLASMA, ret[1])
            nested = ret[2] if len(ret) > 2 else None
            if nested:
                nested_any = True
                if self.counter.has_reference(oid):
                    self.adopt_nested(oid, nested, None, task_id)
            self.store_owned_result(oid, entry)
        if nested_any and sender is not None:
            # Our holds are in place (registrations are ordered before this on each owner's connection).
            self.background.spawn_if_open(self._release_handoff_after_registration(sender, task_id), "release handoff",
                                          loop=self.links.loop)

    async def _release_handoff_after_registration(self, sender: Connection, task_id: bytes) -> None:
        pending = self._registrations.pop(task_id, [])
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if not sender.closed:
            sender.notify("release_handoff", {"tid": task_id})

    def resolve_entry(self, object_id: bytes, owner: Any, callback: Any, recover: bool = False) -> None:
        """Call ``callback(entry)`` on the loop once the object's entry is known here.

        With ``recover``, a borrowed object is first re-made by its owner (its copy was lost).
        """
        store = self.store
        if recover and not self.info.owns(owner) and not self.counter.is_owned(object_id):
            store.on_ready(object_id, callback)
            self.background.spawn_if_open(self._recover_then_fetch(object_id, owner), "recover then fetch", loop=self.links.loop)
            return
        if store.contains(object_id) or self.counter.is_owned(object_id) or self.info.owns(owner):
            store.on_ready(object_id, callback)
            return
        store.on_ready(object_id, callback)
        self.start_fetch(object_id, owner)

    async def _recover_then_fetch(self, object_id: bytes, owner: Any) -> None:
        reply = await self.ask_owner_to_recover(object_id, owner)
        if reply is not None:
            self.store.put(object_id, (INLINE, reply))
            return
        self.start_fetch(object_id, owner)

    async def ask_owner_to_recover(self, object_id: bytes, owner: Any) -> Any:
        """Have the owner re-make a lost object: None once it is re-running it, else the error (inline)."""
        try:
            conn = await self.links.connect_to(owner)
            return await conn.call("recover_object", {"object_id": object_id}, timeout=None)
        except (ConnectionLost, OSError) as exc:
            error = OwnerDiedError(object_id.hex(), f"Object {object_id.hex()} was lost and its owner is unreachable ({exc}).")
            return serialization.serialize_error(error).to_inline()

    def rpc_recover_object(self, conn: Connection, p: msg.ObjectId) -> Any:
        """A borrower lost its copy of an object we own: re-run its task (None) or say why not."""
        error = self.reconstruct(p.object_id)
        return None if error is None else serialization.serialize_error(error).to_inline()

    def start_fetch(self, object_id: bytes, owner: Any) -> None:
        if object_id in self._fetching or self.store.contains(object_id):
            return
        if self.background.spawn_if_open(self._fetch(object_id, owner), "fetch from owner", loop=self.links.loop):
            self._fetching.add(object_id)

    async def _fetch(self, object_id: bytes, owner: Any) -> None:
        try:
            if owner is None:
                raise ObjectLostError(object_id.hex(), f"Object {object_id.hex()} has no known owner.")
            conn = await self.links.connect_to(owner)
            kind, data = await conn.call("get_object", {"object_id": object_id}, timeout=None)
            entry: Entry = (kind, data)
        except (ConnectionLost, OSError) as exc:
            error = OwnerDiedError(
                object_id.hex(),
                f"The owner of object {object_id.hex()} (worker {owner[2].hex()[:12]} at {owner[0]}:{owner[1]}) "
                f"died or is unreachable ({exc}), so the object is lost. Look in the owner's log under "
                f"{os.path.join(self.info.session_dir, 'logs')} for why it exited.",
            )
            entry = (INLINE, serialization.serialize_error(error).to_inline())
        except RemoteError as exc:
            lost = ObjectLostError(object_id.hex(), f"Could not get object {object_id.hex()} from its owner: {exc.message}")
            entry = (INLINE, serialization.serialize_error(lost).to_inline())
        except ObjectLostError as exc:
            entry = (INLINE, serialization.serialize_error(exc).to_inline())
        finally:
            self._fetching.discard(object_id)
        if self.counter.has_reference(object_id) or self.store.has_callbacks(object_id):
            self.store.put(object_id, entry)

    async def rpc_get_object(self, conn: Connection, p: msg.ObjectId) -> list[Any]:
        """A borrower asks for an object we own: answer once it is ready."""
        object_id = p.object_id
        entry = self.store.get(object_id)
        if entry is None:
            if not self.counter.is_owned(object_id):
                error = ObjectLostError(object_id.hex(), f"Object {object_id.hex()} was freed by its owner or never existed.")
                return [INLINE, serialization.serialize_error(error).to_inline()]
            loop = self.links.loop
            fut: asyncio.Future[Entry] = loop.create_future()

            def ready(ready_entry: Entry) -> None:
                loop.call_soon_threadsafe(_set_once, fut, ready_entry)

            self.store.on_ready(object_id, ready)
            entry = await fut
        return [entry[0], entry[1]]


    # ================================================================ introspection
    def memory_table(self) -> msg.MemoryTable:
        """What this process references, for ``ember memory``."""
        counter = self.counter
        borrowers = counter.borrower_counts()
        contained: set[bytes] = {r._id for refs in self._contained.values() for r in refs}
        rows: list[msg.ReferenceRow] = []
        for oid, (local, submitted, owned) in counter.snapshot().items():
            if len(oid) == ids.UNIQUE_ID_LEN:
                kind, size = "ACTOR_HANDLE", 0
            else:
                entry = self.store.get(oid)
                size = 0
                in_store = False
                if entry is not None:
                    in_store = entry[0] == PLASMA
                    size = entry[1][1] if in_store else sum(len(b) for b in [entry[1][1], *entry[1][2]])
                if submitted > 0:
                    kind = "USED_BY_PENDING_TASK"
                elif oid in contained and local <= 1:
                    kind = "CAPTURED_IN_OBJECT"
                elif owned and in_store:
                    kind = "PINNED_IN_MEMORY"
                else:
                    kind = "LOCAL_REFERENCE"
            rows.append({
                "object_id": oid.hex(), "size": size, "reference_type": kind, "owned": owned,
                "local": local, "submitted": submitted, "borrowers": borrowers.get(oid, 0),
                "call_site": counter.call_sites.get(oid, "disabled" if not counter.record_sites else ""),
            })
        info = self.info
        return {"pid": os.getpid(), "worker_id": info.worker_id.hex(), "node_id": info.node_id.hex(),
                "mode": info.mode, "ip": info.node_ip, "objects": rows}

    def rpc_memory_table(self, conn: Connection | None, p: None) -> msg.MemoryTable:
        return self.memory_table()

    def rpc_owns_objects(self, conn: Connection, p: None) -> bool:
        """Whether this process owns objects (or actors) still referenced: its node daemon keeps it then."""
        return self.counter.owns_any()


def _set_once(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _by_address(pairs: list[tuple[bytes, Any]]) -> list[tuple[Any, list[bytes]]]:
    """(id, address) pairs grouped by host and port: [(the first address seen, [ids])]."""
    groups: dict[tuple[str, int], tuple[Any, list[bytes]]] = {}
    for object_id, address in pairs:
        groups.setdefault((address[0], address[1]), (address, []))[1].append(object_id)
    return list(groups.values())
