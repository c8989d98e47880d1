"""The core worker: the runtime inside the driver and every worker process.

It owns the objects this process creates (``put`` values and the returns of
tasks it submits), keeps their entries in the memory store and their
reference counts, submits tasks (``TaskSubmitter``), executes tasks in a
worker (``TaskExecutor``), and answers other processes that ask for the
objects it owns. All network I/O happens on one event loop in a background
thread; user code calls in from its own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
import os
import sys
from collections import deque
from typing import Any

from ember._private import ids, object_file, serialization
from ember._private.config import config
from ember._private.object_ref import ObjectRef
from ember.core.actor_submitter import ActorCall, ActorSubmitter
from ember.core.function_manager import FunctionManager
from ember.core.lineage import Lineage
from ember.core.memory_store import INLINE, PLASMA, Entry, MemoryStore
from ember.core.reference_counter import ReferenceCounter, RefState
from ember.core.task_executor import ACTOR_CALL, CREATE_ACTOR, TASK, TaskExecutor
from ember.core.task_state import TaskEntry
from ember.core.task_submitter import ARG_REF, ARG_VALUE, TaskSubmitter
from ember.exceptions import (
    ConnectionLost,
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    OwnerDiedError,
    RayTaskError,
    RemoteError,
)
from ember.rpc import Connection, EventLoopThread, connect, start_server

logger = logging.getLogger(__name__)

DRIVER = "driver"
WORKER = "worker"


class CopyLost(ObjectLostError):
    """Internal: an object-store copy is gone (node died, file vanished); lineage may recover it."""

#: (task id, job id, task name) of the task running in this thread / coroutine.
_task_context: contextvars.ContextVar[tuple[bytes, bytes, str] | None] = contextvars.ContextVar(
    "ember_task_context", default=None
)


class CoreWorker:
    def __init__(
        self,
        mode: str,
        *,
        gcs_address: str,
        raylet_address: str,
        token: str,
        node_ip: str = "127.0.0.1",
        worker_id: bytes | None = None,
        namespace: str | None = None,
        log_to_driver: bool = True,
        job_config: dict[str, Any] | None = None,
    ) -> None:
        self.mode = mode
        self.gcs_address = gcs_address
        self.raylet_address = raylet_address
        self.token = token
        self.node_ip = node_ip
        self.worker_id = worker_id or ids.random_unique_id()
        self.namespace = namespace
        self.log_to_driver = log_to_driver
        self.job_config = job_config or {}
        self.job_id = b"\0\0\0\0"
        self.node_id = b""
        self.store_dir = ""
        self.session_dir = ""
        self.address: list[Any] = []
        self.memory_store = MemoryStore()
        self.reference_counter = ReferenceCounter(self._on_free, self._wake_drain, self.worker_id)
        #: Refs held on behalf of stored values that contain them (object id -> refs).
        self._contained: dict[bytes, list[Any]] = {}
        #: Refs inside task results we sent, held until the caller has taken them over.
        self._handoffs: dict[bytes, list[Any]] = {}
        self._pending_unborrows: list[tuple[bytes, Any]] = []
        self._registrations: dict[bytes, list[Any]] = {}
        self.function_manager = FunctionManager(self)
        self.submitter = TaskSubmitter(self)
        self.lineage = Lineage(self)
        self.actor_submitter = ActorSubmitter(self)
        self.actor_id: bytes | None = None
        self.gpu_ids: list[int] = []
        self._auto_destroy_actors: set[bytes] = set()
        self._creation_args: dict[bytes, list[bytes]] = {}
        self.executor = TaskExecutor(self) if mode == WORKER else None
        self.io: EventLoopThread | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.raylet: Connection = None  # type: ignore[assignment]
        self.gcs: Connection = None  # type: ignore[assignment]
        self._server: asyncio.AbstractServer | None = None
        self._peers: dict[tuple[str, int], asyncio.Future[Connection]] = {}
        self._fetching: set[bytes] = set()
        self._submit_queue: deque[TaskEntry] = deque()
        self._submit_scheduled = False
        self._pending_frees: list[tuple[bytes, list[Any]]] = []
        #: Results of task attempts whose worker died: the nodes where a copy may have been
        #: stored anyway (the worker's last messages can reach its node after the owner's
        #: first free). Freed there again when the owner frees the object.
        self._dead_attempt_copies: dict[bytes, set[tuple[str, int]]] = {}
        self.driver_task_id = b""
        self.shutting_down = False
        self._inline_limit = config().max_direct_call_object_size
        self.on_raylet_lost: Any = None

    # ================================================================ lifecycle
    def start(self) -> None:
        self.io = EventLoopThread("ember-io")
        self.loop = self.io.loop
        self.io.run(self._connect(), timeout=config().connect_timeout_s + 5)

    async def _connect(self) -> None:
        self._server = await start_server(self, self.token, self.node_ip, 0, info={"role": self.mode})
        port = self._server.sockets[0].getsockname()[1]
        self.address = [self.node_ip, port, self.worker_id]
        self.raylet = await connect(self.raylet_address, self.token, self, info={"role": self.mode})
        if self.mode == WORKER:
            info = await self.raylet.call("register_worker", {"worker_id": self.worker_id, "address": self.address})
        else:
            info = await self.raylet.call("register_client", {"client_id": self.worker_id, "pid": os.getpid(), "address": self.address})
        self.node_id = info["node_id"]
        self.raylet_location = info["raylet_address"]
        self.store_dir = info["store_dir"]
        self.session_dir = info["session_dir"]
        self.raylet.add_close_callback(self._raylet_lost)
        self._gcs_up = asyncio.Event()
        if self.mode == WORKER:
            # A worker may start while the control service restarts: connect in the background;
            # calls that need it (gcs_request) wait for it.
            self.gcs = None  # type: ignore[assignment]
            self.loop.create_task(self._reconnect_gcs())
            return
        self.gcs = await connect(self.gcs_address, self.token, self, info={"role": self.mode})
        if self.mode == DRIVER:
            job = await self.gcs.call("register_job", {
                "namespace": self.namespace, "pid": os.getpid(), "address": self.address,
                "entrypoint": " ".join(sys.argv),
            })
            self.job_id = job["job_id"]
            self.namespace = job["namespace"]
            self.driver_task_id = ids.new_task_id(self.job_id)
            await self.gcs.call("kv_put", {"ns": "job", "key": self.job_id, "value": json.dumps(self.job_config).encode()})
            await self.gcs.call("subscribe", self._channels())
        else:
            await self.gcs.call("subscribe", self._channels())
        self._gcs_up.set()
        self.gcs.add_close_callback(self._gcs_lost)

    def _channels(self) -> list[str]:
        return ["logs", "nodes"] if self.mode == DRIVER and self.log_to_driver else ["nodes"]

    def _gcs_lost(self, conn: Connection) -> None:
        if self.shutting_down or conn is not self.gcs:
            return
        self._gcs_up.clear()
        logger.warning("lost the connection to the control service (%s); reconnecting", conn.close_reason)
        self.loop.create_task(self._reconnect_gcs())

    async def _reconnect_gcs(self) -> None:
        """Wait out a control-service restart: reconnect, re-attach our job, re-subscribe."""
        loop = asyncio.get_running_loop()
        timeout = config().gcs_reconnect_timeout_s
        deadline = loop.time() + timeout
        delay = 0.05
        while not self.shutting_down:
            try:
                conn = await connect(self.gcs_address, self.token, self, info={"role": self.mode}, timeout=2.0, retry=False)
                if self.mode == DRIVER:
                    await conn.call("reattach_job", {"job_id": self.job_id})
                await conn.call("subscribe", self._channels())
            except (ConnectionLost, OSError, RemoteError) as exc:
                if loop.time() > deadline:
                    logger.error("the control service did not come back within %gs: %s", timeout, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.gcs = conn
            conn.add_close_callback(self._gcs_lost)
            self._gcs_up.set()
            logger.info("reconnected to the control service")
            return

    async def gcs_request(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        """Call the control service, waiting out a restart (requests must be idempotent)."""
        wait = config().gcs_reconnect_timeout_s
        while True:
            if not self._gcs_up.is_set():
                try:
                    await asyncio.wait_for(self._gcs_up.wait(), wait)
                except asyncio.TimeoutError:
                    raise ConnectionLost(f"the control service has been unreachable for {wait:g}s") from None
            conn = self.gcs
            try:
                return await conn.call(method, payload, timeout)
            except ConnectionLost:
                if self.shutting_down:
                    raise
                if conn is self.gcs and not conn.closed:
                    raise  # a timeout, not a lost connection
                await asyncio.sleep(0)

    def _raylet_lost(self, conn: Connection) -> None:
        if self.shutting_down:
            return
        if self.mode == WORKER:
            # Our node daemon is gone: nothing can reach us any more.
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(1)
        logger.error("lost the connection to the node daemon: %s", conn.close_reason)
        if self.on_raylet_lost is not None:
            self.on_raylet_lost()

    def shutdown(self) -> None:
        if self.io is None or self.shutting_down:
            return
        self.shutting_down = True

        async def _close() -> None:
            self.submitter.release_idle_leases()
            await asyncio.sleep(0)
            for conn in [self.raylet, self.gcs]:
                if conn is not None:
                    conn.close("shutting down")
            for fut in self._peers.values():
                if fut.done() and not fut.exception():
                    fut.result().close("shutting down")
            if self._server is not None:
                self._server.close()

        try:
            self.io.run(_close(), timeout=5)
        except Exception as exc:  # best effort: the daemons may already be gone
            logger.debug("error while closing connections: %s", exc)
        self.io.stop()

    # ================================================================ context
    def set_gpu_ids(self, gpu_ids: list[int] | None) -> None:
        """The GPUs this worker may use now: CUDA_VISIBLE_DEVICES follows them (empty: none)."""
        gpu_ids = list(gpu_ids or [])
        if gpu_ids != self.gpu_ids or "CUDA_VISIBLE_DEVICES" not in os.environ:
            self.gpu_ids = gpu_ids
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)

    def set_task_context(self, spec: dict[str, Any]) -> None:
        _task_context.set((spec["tid"], spec["job"], spec["name"]))

    def clear_task_context(self) -> None:
        _task_context.set(None)

    @property
    def current_task_id(self) -> bytes | None:
        ctx = _task_context.get()
        return ctx[0] if ctx else None

    @property
    def current_job_id(self) -> bytes:
        ctx = _task_context.get()
        return ctx[1] if ctx else self.job_id

    @property
    def current_task_name(self) -> str | None:
        ctx = _task_context.get()
        return ctx[2] if ctx else None

    def _put_parent_task(self) -> bytes:
        return self.current_task_id or self.driver_task_id or ids.new_task_id(self.current_job_id)

    # ================================================================ loop helpers
    def gcs_call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        assert self.io is not None
        return self.io.run(self.gcs_request(method, payload, timeout))

    def raylet_call(self, method: str, payload: Any, timeout: float | None = -1.0) -> Any:
        assert self.io is not None
        return self.io.run(self.raylet.call(method, payload, timeout))

    async def connect_to(self, address: list[Any]) -> Connection:
        """A (cached) connection to another core worker."""
        key = (address[0], address[1])
        fut = self._peers.get(key)
        if fut is not None:
            if not fut.done():
                return await asyncio.shield(fut)
            if fut.exception() is None and not fut.result().closed:
                return fut.result()
        fut = self.loop.create_future()
        self._peers[key] = fut
        try:
            try:
                conn = await connect(key, self.token, self, info={"role": self.mode}, timeout=5.0, retry=False)
            except ConnectionLost as exc:
                # A core worker listens before its address is ever handed out: a refusal means
                # the process is gone (an owner that died), so fail now rather than retry for 5 s.
                if isinstance(exc.__cause__, ConnectionRefusedError):
                    raise
                conn = await connect(key, self.token, self, info={"role": self.mode}, timeout=5.0)
        except BaseException as exc:
            self._peers.pop(key, None)
            fut.set_exception(exc)
            fut.exception()
            raise
        fut.set_result(conn)
        return conn

    def _wake_drain(self) -> None:
        self.loop.call_soon_threadsafe(self.reference_counter.drain)

    # ================================================================ ownership
    def register_owned_actor(self, actor_id: bytes, auto_destroy: bool, creation_arg_ids: list[bytes] = ()) -> None:  # type: ignore[assignment]
        """Count handles of an actor we created; its constructor's ref arguments stay held
        (restarts run __init__ again with them) until it is dead for good."""
        self.reference_counter.add_owned(actor_id, self.address)
        if auto_destroy:
            self._auto_destroy_actors.add(actor_id)
        if creation_arg_ids:
            self._creation_args[actor_id] = list(creation_arg_ids)

    def release_creation_args(self, actor_id: bytes) -> None:
        arg_ids = self._creation_args.pop(actor_id, None)
        if arg_ids:
            self.reference_counter.remove_submitted(arg_ids)

    def _on_free(self, object_id: bytes, state: RefState) -> None:
        if len(object_id) == ids.UNIQUE_ID_LEN:  # an actor handle count
            if state.owned and object_id in self._auto_destroy_actors:
                self._auto_destroy_actors.discard(object_id)
                self.release_creation_args(object_id)
                payload = {"actor_id": object_id, "no_restart": True,
                           "cause": "all references to it were deleted"}
                try:
                    self.loop.call_soon_threadsafe(self._notify_gcs, "kill_actor", payload)
                except RuntimeError:
                    pass
            return
        entry = self.memory_store.delete(object_id)
        self._contained.pop(object_id, None)
        if state.owned and entry is not None and entry[0] == PLASMA:
            self._free_plasma(object_id, entry[1])
        if state.owned and self._dead_attempt_copies:
            self._free_dead_attempt_copies(object_id)
        if not state.owned and state.registered and state.owner is not None:
            self._pending_unborrows.append((object_id, state.owner))
            if len(self._pending_unborrows) == 1:
                try:
                    self.loop.call_soon_threadsafe(self._flush_unborrows)
                except RuntimeError:
                    pass
        if state.owned:
            try:
                self.loop.call_soon_threadsafe(self.lineage.on_object_freed, object_id)
            except RuntimeError:
                pass

    # ================================================================ borrowing
    def _flush_unborrows(self) -> None:
        pending, self._pending_unborrows = self._pending_unborrows, []
        by_owner: dict[tuple[str, int], tuple[Any, list[bytes]]] = {}
        for object_id, owner in pending:
            by_owner.setdefault((owner[0], owner[1]), (owner, []))[1].append(object_id)
        for owner, object_ids in by_owner.values():
            self.loop.create_task(self._unborrow(owner, object_ids))

    async def _unborrow(self, owner: Any, object_ids: list[bytes]) -> None:
        try:
            conn = await self.connect_to(owner)
            conn.notify("remove_borrowers", {"object_ids": object_ids})
        except (ConnectionLost, OSError):
            pass  # the owner is gone: nothing to release

    def register_borrows(self) -> None:
        """Tell owners about refs this process received, before it uses them.

        Synchronous from user threads (so an owner can never free a value a
        borrower is about to read); from the I/O loop it is only started.
        """
        new = self.reference_counter.take_new_borrows()
        if not new:
            return
        self.reference_counter.mark_registered(oid for oid, _ in new)
        if self.io is not None and self.io.in_loop_thread():
            self.loop.create_task(self._register(new))
        elif self.io is not None:
            self.io.run(self._register(new))

    async def _register(self, borrows: list[tuple[bytes, Any]]) -> None:
        by_owner: dict[tuple[str, int], tuple[Any, list[bytes]]] = {}
        for object_id, owner in borrows:
            by_owner.setdefault((owner[0], owner[1]), (owner, []))[1].append(object_id)

        async def one(owner: Any, object_ids: list[bytes]) -> None:
            try:
                conn = await self.connect_to(owner)
                missing = await conn.call("add_borrowers", {"object_ids": object_ids}, timeout=30.0)
            except (ConnectionLost, OSError) as exc:
                for object_id in object_ids:
                    if not self.memory_store.contains(object_id):
                        error = OwnerDiedError(
                            object_id.hex(),
                            f"The owner of object {object_id.hex()} (worker {owner[2].hex()[:12]} at {owner[0]}:{owner[1]}) "
                            f"is unreachable ({exc}), so the object is lost.",
                        )
                        self.memory_store.put(object_id, (INLINE, serialization.serialize_error(error).to_inline()))
                return
            for object_id in missing:
                error = ObjectLostError(object_id.hex(), f"Object {object_id.hex()} was already freed by its owner.")
                self.memory_store.put(object_id, (INLINE, serialization.serialize_error(error).to_inline()))

        await asyncio.gather(*(one(owner, oids) for owner, oids in by_owner.values()))

    def rpc_add_borrowers(self, conn: Connection, p: dict[str, Any]) -> list[bytes]:
        key = id(conn)
        if not conn.state.get("borrower"):
            conn.state["borrower"] = True
            conn.add_close_callback(lambda c: self.reference_counter.drop_borrower(id(c)))
        return self.reference_counter.add_borrowers(p["object_ids"], key)

    def rpc_remove_borrowers(self, conn: Connection, p: dict[str, Any]) -> None:
        self.reference_counter.remove_borrowers(p["object_ids"], id(conn))

    def adopt_nested(self, object_id: bytes, nested: list[list[Any]], holder: Connection | None, task_id: bytes) -> None:
        """On the loop: a result we own contains these refs; hold them while it lives.

        Registrations with their owners are recorded under ``task_id`` so that the
        sender's hold is released only after they are done."""
        refs = [ObjectRef(oid, owner) for oid, owner in nested]
        self._contained.setdefault(object_id, []).extend(refs)
        new = self.reference_counter.take_new_borrows()
        if new:
            self.reference_counter.mark_registered(oid for oid, _ in new)
            self._registrations.setdefault(task_id, []).append(self.loop.create_task(self._register(new)))

    def rpc_release_handoff(self, conn: Connection, p: dict[str, Any]) -> None:
        self._handoffs.pop(p["tid"], None)

    def _hold_handoff(self, task_id: bytes, refs: list[Any], conn: Connection | None) -> None:
        self._handoffs.setdefault(task_id, []).extend(refs)

    def note_dead_attempt(self, return_ids: list[bytes], raylet: Connection) -> None:
        """On the loop: an attempt that ran under ``raylet`` died; free its results there now and again later."""
        if not raylet.closed:
            raylet.notify("free_objects", {"object_ids": list(return_ids)})
        address = raylet.peername
        if isinstance(address, tuple) and len(address) >= 2:
            for oid in return_ids:
                self._dead_attempt_copies.setdefault(oid, set()).add((address[0], address[1]))

    def _free_dead_attempt_copies(self, object_id: bytes) -> None:
        for address in self._dead_attempt_copies.pop(object_id, ()):
            self._free_plasma(object_id, [None, 0, list(address)])

    def _free_plasma(self, object_id: bytes, location: list[Any]) -> None:
        self._pending_frees.append((object_id, location[2]))
        if len(self._pending_frees) == 1:
            try:
                self.loop.call_soon_threadsafe(self._flush_frees)
            except RuntimeError:
                pass

    def _flush_frees(self) -> None:
        frees, self._pending_frees = self._pending_frees, []
        by_raylet: dict[tuple[str, int], list[bytes]] = {}
        for object_id, address in frees:
            by_raylet.setdefault((address[0], address[1]), []).append(object_id)
        for address, object_ids in by_raylet.items():
            if list(address) == list(self.raylet_location):
                if self.raylet is not None and not self.raylet.closed:
                    self.raylet.notify("free_objects", {"object_ids": object_ids})
            else:
                self.loop.create_task(self._free_remote(list(address), object_ids))

    async def _free_remote(self, address: list[Any], object_ids: list[bytes]) -> None:
        try:
            conn = await self.connect_to(address)
            conn.notify("free_objects", {"object_ids": object_ids})
        except (ConnectionLost, OSError) as exc:
            logger.debug("could not free objects on %s: %s", address, exc)

    def store_owned_result(self, object_id: bytes, entry: Entry) -> None:
        """Record a task result; called on the loop when the reply arrives."""
        if not self.reference_counter.has_reference(object_id):
            # Nobody holds a ref any more: drop the value at once.
            if entry[0] == PLASMA:
                self._free_plasma(object_id, entry[1])
            if self._dead_attempt_copies:
                self._free_dead_attempt_copies(object_id)
            return
        self.memory_store.put(object_id, entry)

    def store_results(self, task_id: bytes, return_ids: list[bytes], returns: list[Any], sender: Connection | None) -> None:
        """On the loop: record a finished task's results and adopt the refs nested in them."""
        nested_any = False
        for oid, ret in zip(return_ids, returns):
            entry: Entry = (INLINE, ret[1]) if ret[0] == 0 else (PLASMA, ret[1])
            nested = ret[2] if len(ret) > 2 else None
            if nested:
                nested_any = True
                if self.reference_counter.has_reference(oid):
                    self.adopt_nested(oid, nested, None, task_id)
            self.store_owned_result(oid, entry)
        if nested_any and sender is not None:
            # Our holds are in place (registrations are ordered before this on each owner's connection).
            self.loop.create_task(self._release_handoff_after_registration(sender, task_id))

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
        store = self.memory_store
        if recover and not self._owns(owner) and not self.reference_counter.is_owned(object_id):
            store.on_ready(object_id, callback)
            self.loop.create_task(self._recover_then_fetch(object_id, owner))
            return
        if store.contains(object_id) or self.reference_counter.is_owned(object_id) or self._owns(owner):
            store.on_ready(object_id, callback)
            return
        store.on_ready(object_id, callback)
        self._start_fetch(object_id, owner)

    async def _recover_then_fetch(self, object_id: bytes, owner: Any) -> None:
        reply = await self._ask_owner_to_recover(object_id, owner)
        if reply is not None:
            self.memory_store.put(object_id, (INLINE, reply))
            return
        self._start_fetch(object_id, owner)

    def _owns(self, owner: Any) -> bool:
        return owner is not None and owner[2] == self.worker_id

    def _start_fetch(self, object_id: bytes, owner: Any) -> None:
        if object_id in self._fetching or self.memory_store.contains(object_id):
            return
        self._fetching.add(object_id)
        self.loop.create_task(self._fetch(object_id, owner))

    async def _fetch(self, object_id: bytes, owner: Any) -> None:
        try:
            if owner is None:
                raise ObjectLostError(object_id.hex(), f"Object {object_id.hex()} has no known owner.")
            conn = await self.connect_to(owner)
            kind, data = await conn.call("get_object", {"object_id": object_id}, timeout=None)
            entry: Entry = (kind, data)
        except (ConnectionLost, OSError) as exc:
            error = OwnerDiedError(
                object_id.hex(),
                f"The owner of object {object_id.hex()} (worker {owner[2].hex()[:12]} at {owner[0]}:{owner[1]}) "
                f"died or is unreachable ({exc}), so the object is lost. Look in the owner's log under "
                f"{os.path.join(self.session_dir, 'logs')} for why it exited.",
            )
            entry = (INLINE, serialization.serialize_error(error).to_inline())
        except RemoteError as exc:
            error = ObjectLostError(object_id.hex(), f"Could not get object {object_id.hex()} from its owner: {exc.message}")
            entry = (INLINE, serialization.serialize_error(error).to_inline())
        except ObjectLostError as exc:
            entry = (INLINE, serialization.serialize_error(exc).to_inline())
        finally:
            self._fetching.discard(object_id)
        if self.reference_counter.has_reference(object_id) or self.memory_store._callbacks.get(object_id):
            self.memory_store.put(object_id, entry)

    async def rpc_get_object(self, conn: Connection, p: dict[str, Any]) -> list[Any]:
        """A borrower asks for an object we own: answer once it is ready."""
        object_id = p["object_id"]
        entry = self.memory_store.get(object_id)
        if entry is None:
            if not self.reference_counter.is_owned(object_id):
                error = ObjectLostError(object_id.hex(), f"Object {object_id.hex()} was freed by its owner or never existed.")
                return [INLINE, serialization.serialize_error(error).to_inline()]
            fut: asyncio.Future[Entry] = self.loop.create_future()
            self.memory_store.on_ready(object_id, lambda e: self.loop.call_soon_threadsafe(_set_once, fut, e))
            entry = await fut
        return [entry[0], entry[1]]

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
        object_id = ids.put_object_id(self._put_parent_task())
        return self._store_put(object_id, obj)

    def _store_put(self, object_id: bytes, obj: serialization.SerializedObject) -> ObjectRef:
        self.reference_counter.add_owned(object_id, self.address)
        if obj.nested_refs:
            self._hold_nested(object_id, obj.nested_refs)
        if obj.total_bytes < self._inline_limit:
            self.memory_store.put(object_id, (INLINE, obj.to_inline()))
        else:
            size = self.write_plasma(object_id, obj, self.worker_id, self.address)
            self.memory_store.put(object_id, (PLASMA, [self.node_id, size, self.raylet_location]))
        return ObjectRef(object_id, self.address)

    def write_plasma(self, object_id: bytes, obj: serialization.SerializedObject, owner_id: bytes,
                     owner_address: list[Any] | None = None) -> int:
        """Write ``obj`` into this node's object store; returns the file size.

        ``owner_address`` lets the node daemon free the object if its owner (on another node) dies.
        """
        size = object_file.file_size(obj)
        try:
            reply = self.raylet_call("create_object", {"object_id": object_id, "size": size, "owner": owner_id,
                                                       "owner_address": owner_address})
        except RemoteError as exc:
            if exc.code == "ObjectStoreFullError":
                raise ObjectStoreFullError(exc.message) from None
            raise
        path = os.path.join(self.store_dir, object_id.hex())
        try:
            object_file.write_object(path, obj, reuse=isinstance(reply, dict) and bool(reply.get("reuse")))
        except FileExistsError:
            pass  # a retried task wrote this return before
        except OSError as exc:
            self.loop.call_soon_threadsafe(self.raylet.notify, "free_objects", {"object_ids": [object_id]})
            raise ObjectStoreFullError(
                f"Could not write an object of {size} bytes to {self.store_dir}: {exc}. "
                "The shared-memory file system may be smaller than the configured store."
            ) from exc
        self.loop.call_soon_threadsafe(self.raylet.notify, "seal_object", {"object_id": object_id})
        return size

    def _hold_nested(self, object_id: bytes, nested: list[Any]) -> list[list[Any]]:
        """Keep refs contained in a stored value alive while it lives; returns [id, owner] of the object refs."""
        handles = [r._id for r in nested if not isinstance(r, ObjectRef)]
        if handles:
            self.reference_counter.mark_escaped(handles)  # actor handles
        # Own copies: each adds a local count that lasts exactly as long as the value.
        refs = [ObjectRef(r._id, r._owner) for r in nested if isinstance(r, ObjectRef)]
        if refs:
            self._contained.setdefault(object_id, []).extend(refs)
        return [[r._id, r._owner] for r in refs]

    def encode_return(self, object_id: bytes, value: Any, owner: list[Any], task_id: bytes = b"") -> list[Any]:
        """A task's return value in reply form: inline, or written to the object store.

        Refs inside the value are listed (the caller adopts them) and held here until
        the caller says it has (``release_handoff``).
        """
        obj = self.serialize_value(value, "the return value")
        nested: list[list[Any]] = []
        if obj.nested_refs:
            handles = [r._id for r in obj.nested_refs if not isinstance(r, ObjectRef)]
            if handles:
                self.reference_counter.mark_escaped(handles)
            refs = [r for r in obj.nested_refs if isinstance(r, ObjectRef)]
            self._hold_handoff(task_id, refs, None)
            nested = [[r._id, r._owner] for r in refs]
        if obj.total_bytes < self._inline_limit:
            return [0, obj.to_inline(), nested]
        size = self.write_plasma(object_id, obj, owner[2], owner)
        return [1, [self.node_id, size, self.raylet_location], nested]

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
        import time as _time

        deadline = None if timeout is None else _time.monotonic() + timeout
        recoveries = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - _time.monotonic())
            entries = self._wait_entries(refs, len(refs), remaining, fetch=True)
            try:
                values = [self._value_of(ref._id, entry) for ref, entry in zip(refs, entries)]
                self.register_borrows()  # refs nested in the values
                return values
            except CopyLost as lost:
                recoveries += 1
                ref = next(r for r in refs if r._id.hex() == lost.object_ref_hex)
                if recoveries > 100:
                    raise
                self._recover(ref)

    def _recover(self, ref: ObjectRef) -> None:
        """A stored copy of ``ref`` is gone: have its owner re-run the task that made it."""
        assert self.io is not None
        if self.reference_counter.is_owned(ref._id) or self._owns(ref._owner):
            fut = concurrent.futures.Future()  # type: ignore[var-annotated]

            def start() -> None:
                fut.set_result(self.lineage.reconstruct(ref._id))

            self.loop.call_soon_threadsafe(start)
            error = fut.result()
            if error is not None:
                raise error
            return
        reply = self.io.run(self._ask_owner_to_recover(ref._id, ref._owner))
        if reply is not None:
            _, error = serialization.deserialize_inline(reply)
            raise error
        self.memory_store.delete(ref._id)

    async def _ask_owner_to_recover(self, object_id: bytes, owner: Any) -> Any:
        try:
            conn = await self.connect_to(owner)
            return await conn.call("recover_object", {"object_id": object_id}, timeout=None)
        except (ConnectionLost, OSError) as exc:
            error = OwnerDiedError(object_id.hex(), f"Object {object_id.hex()} was lost and its owner is unreachable ({exc}).")
            return serialization.serialize_error(error).to_inline()

    def rpc_recover_object(self, conn: Connection, p: dict[str, Any]) -> Any:
        """A borrower lost its copy of an object we own: re-run its task (None) or say why not."""
        error = self.lineage.reconstruct(p["object_id"])
        return None if error is None else serialization.serialize_error(error).to_inline()

    def _wait_entries(self, refs: list[ObjectRef], num: int, timeout: float | None, fetch: bool) -> list[Entry | None]:
        self._block_until_ready(refs, num, timeout)
        store = self.memory_store
        return [store.get(r._id) for r in refs]

    def _block_until_ready(self, refs: list[ObjectRef], num: int, timeout: float | None) -> None:
        """Return once ``num`` of ``refs`` have entries here (fetching borrowed ones); raises GetTimeoutError."""
        store = self.memory_store
        missing = [r for r in refs if not store.contains(r._id)]
        if missing:
            for ref in missing:
                if not self._owns(ref._owner) and not self.reference_counter.is_owned(ref._id):
                    self.loop.call_soon_threadsafe(self._start_fetch, ref._id, ref._owner)
            wanted = {r._id for r in refs}
            need = min(num, len(wanted))
            blocked = False
            if self.executor is not None and self.current_task_id is not None:
                blocked = True
                self.executor.bounce_queued()
                self.loop.call_soon_threadsafe(self.raylet.notify, "notify_blocked", None)
            try:
                ready = store.wait(wanted, need, timeout)
            finally:
                if blocked:
                    self.loop.call_soon_threadsafe(self.raylet.notify, "notify_unblocked", None)
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
        path = os.path.join(self.store_dir, object_id.hex())
        if node_id == self.node_id and not os.path.exists(path):
            # Spilled to disk: have the node daemon bring it back.
            if not self.raylet_call("restore_object", {"object_id": object_id}, timeout=None):
                raise CopyLost(
                    object_id.hex(),
                    f"Object {object_id.hex()} is no longer in the object store of node {node_id.hex()[:12]} "
                    "(it was freed or its node's store was cleared).",
                )
        elif node_id != self.node_id and not os.path.exists(path):
            try:
                self.raylet_call("pull_object", {"object_id": object_id, "address": location[2], "size": location[1]}, timeout=None)
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
                if node_id != self.node_id or not self.raylet_call("restore_object", {"object_id": object_id}, timeout=None):
                    break
        raise CopyLost(
            object_id.hex(),
            f"Object {object_id.hex()} is no longer in the object store of node {node_id.hex()[:12]} "
            "(it was freed or its node's store was cleared).",
        )

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None, fetch_local: bool) -> tuple[list[ObjectRef], list[ObjectRef]]:
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
        contains = self.memory_store.contains
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
            self.resolve_entry(ref._id, ref._owner, on_entry)
            # keep the ref alive until it resolves
            future.add_done_callback(lambda f, r=ref: None)

        self.loop.call_soon_threadsafe(register)
        return future

    def object_from_coroutine(self, make_coro: Any) -> ObjectRef:
        """An owned ObjectRef resolved with the result (or error) of ``make_coro()`` run on the loop."""
        object_id = ids.put_object_id(self._put_parent_task())
        self.reference_counter.add_owned(object_id, self.address)
        ref = ObjectRef(object_id, self.address)

        async def run() -> None:
            try:
                value = await make_coro()
                entry: Entry = (INLINE, serialization.serialize(value).to_inline())
            except Exception as exc:
                entry = (INLINE, serialization.serialize_error(exc).to_inline())
            self.store_owned_result(object_id, entry)

        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(run()))
        return ref

    # ================================================================ tasks
    def submit_task(self, entry: TaskEntry) -> None:
        """Hand a task to the loop; many submissions share one wake-up."""
        self._submit_queue.append(entry)
        if not self._submit_scheduled:
            self._submit_scheduled = True
            self.loop.call_soon_threadsafe(self._drain_submissions)

    def _drain_submissions(self) -> None:
        self._submit_scheduled = False
        queue = self._submit_queue
        submit = self.submitter.submit
        submit_actor = self.actor_submitter.submit
        while queue:
            item = queue.popleft()
            if type(item) is ActorCall:
                submit_actor(item)
            else:
                submit(item)

    def _notify_gcs(self, method: str, payload: Any) -> None:
        if self.gcs is not None and not self.gcs.closed:
            self.gcs.notify(method, payload)

    def submit_actor_call(
        self, actor_id: bytes, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
        num_returns: int, group: str | None, name: str, max_task_retries: int,
    ) -> list[ObjectRef]:
        task_id = ids.new_task_id(self.current_job_id)
        return_ids = [ids.return_object_id(task_id, i + 1) for i in range(num_returns)]
        wire_args, kw_names, arg_ids = self.encode_args(args, kwargs, name)
        address = self.address
        spec = {
            "tid": task_id, "job": self.current_job_id, "aid": actor_id, "m": method,
            "args": wire_args, "kw": kw_names, "nret": num_returns, "rids": return_ids,
            "owner": address, "name": name,
        }
        if group:
            spec["cg"] = group
        counter = self.reference_counter
        for rid in return_ids:
            counter.add_owned(rid, address)
        # A pending call keeps its actor alive (as in Ray: `get(A.remote().f.remote())` works);
        # released with the argument refs when the call completes.
        counter.add_submitted([actor_id], lambda _: None)
        arg_ids = [*arg_ids, actor_id]
        refs = [ObjectRef(rid, address) for rid in return_ids]
        self.submit_task(ActorCall(spec, return_ids, max_task_retries, arg_ids))  # type: ignore[arg-type]
        return refs

    def cancel(self, ref: ObjectRef, force: bool) -> None:
        task_id = ids.task_id_of(ref._id)
        self.loop.call_soon_threadsafe(self.submitter.cancel, task_id, force)

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
                    if isinstance(r, ObjectRef):
                        ref_ids.append(r._id)
                        nested_owners[r._id] = r._owner
                    else:
                        self.reference_counter.mark_escaped([r._id])
            if obj.total_bytes < self._inline_limit:
                wire.append([ARG_VALUE, obj.to_inline()])
            else:
                ref = self._store_put(ids.put_object_id(self._put_parent_task()), obj)
                wire.append([ARG_REF, ref._id, ref._owner])
                ref_ids.append(ref._id)
        if ref_ids:
            owners = {r[1]: r[2] for r in wire if r[0] == ARG_REF}
            owners.update(nested_owners)
            self.reference_counter.add_submitted(ref_ids, owners.__getitem__)
        return wire, names, ref_ids

    # ================================================================ RPC handlers
    def rpc_push_task(self, conn: Connection, spec: dict[str, Any]) -> Any:
        if self.executor is None:
            raise ValueError("this process does not execute tasks")
        return self.executor.push(TASK, spec)

    def rpc_create_actor(self, conn: Connection, spec: dict[str, Any]) -> Any:
        if self.executor is None or self.executor.actor is not None:
            raise ValueError("this process cannot host an actor")
        return self.executor.push(CREATE_ACTOR, spec)

    def rpc_push_actor_task(self, conn: Connection, spec: dict[str, Any]) -> Any:
        if self.executor is None:
            raise ValueError("this process does not host an actor")
        return self.executor.push(ACTOR_CALL, spec)

    def rpc_steal_tasks(self, conn: Connection, p: Any) -> None:
        if self.executor is not None:
            self.executor.bounce_queued()

    def rpc_cancel_task(self, conn: Connection, p: dict[str, Any]) -> None:
        if self.executor is not None:
            self.executor.cancel(p["tid"])

    def rpc_infeasible(self, conn: Connection, p: dict[str, Any]) -> None:
        self.submitter.on_infeasible(p["request_id"], p["message"])

    def rpc_worker_oom_killed(self, conn: Connection, p: dict[str, Any]) -> None:
        self.submitter.on_worker_oom_killed(p["worker_id"], p["detail"])

    def rpc_release_idle_leases(self, conn: Connection, p: Any) -> None:
        self.submitter.release_idle_leases()

    def rpc_pub(self, conn: Connection, message: list[Any]) -> None:
        channel, data = message
        if channel == "logs":
            self._print_logs(data)
        elif channel == "nodes" and not data.get("Alive"):
            node_id = bytes.fromhex(data["NodeID"])
            address = f"{data['NodeManagerAddress']}:{data['NodeManagerPort']}"
            reason = data.get("DeathReason") or "unknown reason"
            if self.mode == DRIVER:
                logger.warning("node %s at %s died: %s", node_id.hex()[:12], address, reason)
            self.submitter.on_node_died(node_id, address, reason)

    def _print_logs(self, record: dict[str, Any]) -> None:
        job = record.get("job", "")
        if job and job != self.job_id.hex():
            return
        fn = record.get("fn") or ""
        prefix = f"({fn} pid={record['pid']}) " if fn else f"(pid={record['pid']}) "
        out = sys.stderr if record.get("err") else sys.stdout
        try:
            out.write("".join(prefix + line + "\n" for line in record["lines"]))
            out.flush()
        except (OSError, ValueError):
            pass

    def rpc_memory_table(self, conn: Connection, p: Any) -> dict[str, Any]:
        """What this process references, for ``ember memory``."""
        counter = self.reference_counter
        borrowers = counter.borrower_counts()
        contained: set[bytes] = {r._id for refs in self._contained.values() for r in refs}
        rows = []
        for oid, (local, submitted, owned, _escaped) in counter.snapshot().items():
            if len(oid) == ids.UNIQUE_ID_LEN:
                kind, size = "ACTOR_HANDLE", 0
            else:
                entry = self.memory_store.get(oid)
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
        return {"pid": os.getpid(), "worker_id": self.worker_id.hex(), "node_id": self.node_id.hex(),
                "mode": self.mode, "ip": self.node_ip, "objects": rows}

    def rpc_owns_objects(self, conn: Connection, p: Any) -> bool:
        """Whether this process owns objects (or actors) still referenced: its node daemon keeps it then."""
        return any(owned for (_local, _submitted, owned, _escaped) in self.reference_counter.snapshot().values())

    def rpc_ping(self, conn: Connection, p: Any) -> str:
        return "pong"


def _set_once(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)
