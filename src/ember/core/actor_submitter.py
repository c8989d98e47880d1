"""Sending actor calls from a caller (driver, worker or another actor).

Runs on the I/O loop. Per actor, a caller keeps its calls in submission
order: a call is pushed once its ref arguments are resolved *and* every
earlier call has been pushed, over one connection, so a synchronous actor
runs one caller's calls in order.

The caller learns where the actor lives (and when it restarts or dies) by
long-polling the control service's ``wait_actor`` with the last incarnation
it saw. When the connection to the actor drops, calls in flight are resent
to the next incarnation while their ``max_task_retries`` allow, and fail
with ``RayActorError`` otherwise; once the actor is dead every queued and
later call fails at once with ``ActorDiedError`` saying why.

What a caller knows of an actor (``ActorView``, transitions in ``ACTOR_VIEW_TRANSITIONS``)::

    UNKNOWN --poll--> ALIVE --connection lost--> RESTARTING --poll--> ALIVE
       |                |                            |
       +----------------+--------- poll: dead -------+--> DEAD (final)
"""

from __future__ import annotations

import asyncio
import enum
import heapq
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from ember._private import serialization
from ember._private.background import BackgroundTasks
from ember._private.state_machine import History, TransitionTable
from ember.core.links import ClusterLinks, ProcessInfo
from ember.core.memory_store import INLINE, Entry
from ember.core.ownership_protocol import OwnershipService
from ember.core.task_manager import ARG_PLASMA, ARG_REF, ARG_VALUE
from ember.exceptions import (
    ActorDiedError,
    ActorUnschedulableError,
    RayActorError,
    RayError,
    RuntimeEnvSetupError,
    TaskCancelledError,
)
from ember.protocol.core_worker import ActorCallSpec, PushReply
from ember.rpc import Connection

if TYPE_CHECKING:
    from ember.core.task_counts import NoTaskCounts, TaskCounts
    from ember.core.task_events import Host, TaskEventRecorder


class ActorCall:
    __slots__ = ("spec", "return_ids", "retries_left", "arg_ids", "deps_pending", "done", "pushed_to", "lost_reason")

    def __init__(self, spec: ActorCallSpec, return_ids: list[bytes], retries: int, arg_ids: list[bytes]) -> None:
        self.spec = spec
        self.return_ids = return_ids
        self.retries_left = retries
        self.arg_ids = arg_ids
        self.deps_pending = 0
        self.done = False
        self.pushed_to = 0
        #: Set when the connection dropped during this call and no retry is allowed:
        #: it fails once the control service says whether the actor restarted or died.
        self.lost_reason = ""


class ActorView(enum.Enum):
    UNKNOWN = "UNKNOWN"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


V = ActorView
ACTOR_VIEW_TRANSITIONS: TransitionTable[ActorView] = TransitionTable("actor view", {
    (V.UNKNOWN, V.ALIVE): "learned the actor's address and connected",
    (V.UNKNOWN, V.DEAD): "the control service says it is dead",
    (V.ALIVE, V.ALIVE): "reconnected to a newer incarnation",
    (V.ALIVE, V.RESTARTING): "the connection to the actor dropped",
    (V.ALIVE, V.DEAD): "the control service says it is dead",
    (V.RESTARTING, V.ALIVE): "connected to its new incarnation",
    (V.RESTARTING, V.DEAD): "it did not come back",
})


class ActorClient:
    """What one caller knows about one actor."""

    state: ActorView

    def __init__(self, actor_id: bytes) -> None:
        self.actor_id = actor_id
        self.history = History()
        ACTOR_VIEW_TRANSITIONS.start(self, ActorView.UNKNOWN, "first handle used")
        self.incarnation = 0
        self.conn: Connection | None = None
        self.connecting = False
        self.polling = False
        self.queue: deque[ActorCall] = deque()
        self.in_flight: dict[bytes, ActorCall] = {}
        self.death_error: BaseException | None = None
        self.next_seq = 0
        #: The actor's node daemon, [host, port] (None until known).
        self.node_address: list[Any] | None = None
        #: Where the actor runs: (worker id, node id, pid) of its current incarnation (task events).
        self.host: Host | None = None
        #: (seq, task id) of pushed calls, a min-heap; entries no longer in flight are
        #: dropped when they reach the top (see ``oldest_in_flight``).
        self.in_flight_seqs: list[tuple[int, bytes]] = []

    @property
    def label(self) -> str:
        return f"caller's view of actor {self.actor_id.hex()}"

    def transition(self, new: ActorView, reason: str) -> None:
        ACTOR_VIEW_TRANSITIONS.move(self, new, reason)

    def oldest_in_flight(self) -> int | None:
        """The lowest sequence number among the calls in flight (amortised O(log n))."""
        heap = self.in_flight_seqs
        while heap:
            seq, tid = heap[0]
            call = self.in_flight.get(tid)
            if call is not None and call.spec.get("seq") == seq:
                return seq
            heapq.heappop(heap)
        return None


class ActorSubmitter:
    def __init__(self, info: ProcessInfo, links: ClusterLinks, ownership: OwnershipService,
                 events: TaskEventRecorder, counts: TaskCounts | NoTaskCounts, background: BackgroundTasks) -> None:
        self.info = info
        self.links = links
        self.ownership = ownership
        self.events = events
        self.counts = counts
        self.background = background
        self.clients: dict[bytes, ActorClient] = {}

    def _client(self, actor_id: bytes) -> ActorClient:
        client = self.clients.get(actor_id)
        if client is None:
            client = self.clients[actor_id] = ActorClient(actor_id)
        return client

    # ================================================================ intake
    def submit(self, call: ActorCall) -> None:
        client = self._client(call.spec["aid"])
        if client.state == ActorView.DEAD:
            self._fail(call, client.death_error or ActorDiedError("The actor is dead."))
            return
        client.queue.append(call)
        self.counts.changed()
        self.events.actor_call(call.spec, "PENDING_ARGS_AVAIL")
        for index, arg in enumerate(call.spec["args"]):
            if arg[0] == ARG_REF:
                call.deps_pending += 1
                self.ownership.resolve_entry(arg[1], arg[2], partial(self._dep_ready, client, call, index))
        self._ensure_connected(client)
        self._flush(client)

    def _dep_ready(self, client: ActorClient, call: ActorCall, index: int, resolved: Entry) -> None:
        if call.done:
            return
        kind, data = resolved
        arg = call.spec["args"][index]
        if kind == INLINE:
            call.spec["args"][index] = [ARG_VALUE, data]
        else:
            call.spec["args"][index] = [ARG_PLASMA, arg[1], arg[2], data]
        call.deps_pending -= 1
        self._flush(client)

    # ================================================================ connection
    def _ensure_connected(self, client: ActorClient) -> None:
        if client.state == ActorView.ALIVE and client.conn is not None and not client.conn.closed:
            return
        if not client.polling and client.state != ActorView.DEAD:
            client.polling = True
            self.background.spawn_if_open(self._poll(client), "wait for an actor", loop=self.links.loop)

    async def _poll(self, client: ActorClient) -> None:
        try:
            info = await self.links.gcs_request(
                "wait_actor", {"actor_id": client.actor_id, "after": client.incarnation}, timeout=None
            )
            if info["state"] == "ALIVE":
                conn = await self.links.connect_to(info["address"])
                client.incarnation = info["incarnation"]
                client.node_address = info.get("node_address")
                address, node_id = info["address"], info.get("node_id")
                client.host = (address[2], node_id, info.get("pid", 0)) if len(address or ()) > 2 and node_id else None
                client.conn = conn
                client.transition(ActorView.ALIVE, f"incarnation {client.incarnation}")
                conn.add_close_callback(partial(self._connection_lost, client, info["incarnation"]))
            else:
                self._mark_dead(client, info)
        except RayError as exc:
            if client.state != ActorView.ALIVE:
                self._mark_dead(client, {"death_cause": f"its state could not be read from the control service ({exc})"})
        finally:
            client.polling = False
        self._flush(client)
        if client.state not in (ActorView.ALIVE, ActorView.DEAD) and (client.queue or client.in_flight):
            self._ensure_connected(client)

    def _connection_lost(self, client: ActorClient, incarnation: int, conn: Connection) -> None:
        if client.conn is not conn:
            return
        client.conn = None
        if client.state == ActorView.DEAD:
            return
        client.transition(ActorView.RESTARTING, f"connection lost: {conn.close_reason}")
        # Calls in flight go back to the front of the queue: resent if their retries allow;
        # otherwise failed once we know whether the actor restarted or died (for the message).
        calls = list(client.in_flight.values())
        client.in_flight.clear()
        client.in_flight_seqs.clear()
        for call in calls:
            # The actor may have stored this call's results before it died.
            self.ownership.note_dead_attempt(call.return_ids, client.node_address)
            if call.retries_left != 0:
                if call.retries_left > 0:
                    call.retries_left -= 1
            else:
                call.lost_reason = conn.close_reason
        for call in reversed(calls):
            client.queue.appendleft(call)
        self._ensure_connected(client)

    def _mark_dead(self, client: ActorClient, info: dict[str, Any]) -> None:
        client.transition(ActorView.DEAD, info.get("death_cause") or "unknown cause")
        client.conn = None
        cause = info.get("death_cause") or "unknown cause"
        creation_error = info.get("creation_error")
        message = f"The actor {client.actor_id.hex()[:12]} is dead: {cause}."
        if creation_error:
            try:
                _, err = serialization.deserialize_inline(creation_error)
                message += f"\n{err}"
            except Exception:  # the error itself could not be rebuilt here
                pass
        if info.get("error_type") == "ActorUnschedulableError":
            error: BaseException = ActorUnschedulableError(message)
        elif info.get("error_type") == "RuntimeEnvSetupError":
            error = RuntimeEnvSetupError(message)
        else:
            error = ActorDiedError(message, actor_id=client.actor_id.hex())
        client.death_error = error
        self.ownership.release_creation_args(client.actor_id)
        for call in list(client.in_flight.values()):
            self._fail(call, error)
        client.in_flight.clear()
        client.in_flight_seqs.clear()
        while client.queue:
            self._fail(client.queue.popleft(), error)

    # ================================================================ pushing
    def _flush(self, client: ActorClient) -> None:
        conn = client.conn
        if client.state != ActorView.ALIVE or conn is None or conn.closed:
            return
        queue = client.queue
        for call in [c for c in queue if c.lost_reason]:
            queue.remove(call)
            self._fail(call, RayActorError(
                f"The actor {client.actor_id.hex()[:12]} died while running {call.spec['name']} "
                f"({call.lost_reason}) and was restarted, but the call has no retries left "
                "(max_task_retries), so it was not run again.",
                actor_id=client.actor_id.hex(),
            ))
        while queue and queue[0].deps_pending == 0:
            call = queue.popleft()
            if call.done:
                continue
            client.in_flight[call.spec["tid"]] = call
            self.counts.changed()
            self.events.actor_call(call.spec, "SUBMITTED_TO_WORKER")
            call.pushed_to = client.incarnation
            # Sequence numbers let the actor run this caller's calls in order even if the
            # network reorders them; seq_base says every earlier call is finished.
            if "seq" not in call.spec:
                call.spec["seq"] = client.next_seq
                client.next_seq += 1
            call.spec["caller"] = self.info.worker_id
            heapq.heappush(client.in_flight_seqs, (call.spec["seq"], call.spec["tid"]))
            oldest = client.oldest_in_flight()
            call.spec["seq_base"] = call.spec["seq"] if oldest is None else oldest
            fut = conn.call_future("push_actor_task", call.spec)
            fut.add_done_callback(partial(self._on_reply, client, call))

    def _on_reply(self, client: ActorClient, call: ActorCall, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None or call.done:
            return  # the connection dropped: _connection_lost decides
        if client.in_flight.get(call.spec["tid"]) is call:
            del client.in_flight[call.spec["tid"]]
        reply: PushReply = fut.result()
        status = reply.get("s")
        if status == "ok":
            self._finish(call, reply["r"], reply.get("t"), client.host)
        elif status == "err":
            self._store(call, (INLINE, reply["e"]), reply.get("t"), client.host)
        elif status == "cancelled":
            self._fail(call, TaskCancelledError(call.spec["tid"].hex()))
        elif status == "exit":
            self._fail(call, ActorDiedError(
                f"The actor {client.actor_id.hex()[:12]} exited because it called exit_actor() during this call.",
                actor_id=client.actor_id.hex(),
            ))
        else:
            self._fail(call, RayActorError(f"unexpected reply from the actor: {reply!r}"))

    # ================================================================ cancel
    def cancel(self, task_id: bytes, recursive: bool = True) -> bool:
        """Cancel an actor call this process submitted, as Ray does: a queued call is failed at
        once; a running one is told (an async actor cancels its coroutine; a sync or threaded
        actor sets the flag ``is_canceled()`` reads and lets the call finish)."""
        for client in self.clients.values():
            call = client.in_flight.get(task_id)
            if call is not None:
                if client.conn is not None and not client.conn.closed:
                    client.conn.notify("cancel_task", {"tid": task_id, "recursive": recursive})
                return True
            for call in client.queue:
                if call.spec["tid"] == task_id and not call.done:
                    client.queue.remove(call)
                    self._fail(call, TaskCancelledError(task_id.hex()))
                    return True
        return False

    # ================================================================ results
    def _finish(self, call: ActorCall, returns: list[Any], ran: list[float] | None = None,
                host: Host | None = None) -> None:
        call.done = True
        self.counts.actor_call_ended(call.spec, failed=False)
        self.events.actor_call(call.spec, "FINISHED", ran, host)
        self._release(call)
        client = self.clients.get(call.spec["aid"])
        self.ownership.store_results(call.spec["tid"], call.return_ids, returns, client.conn if client else None)

    def _store(self, call: ActorCall, entry: Entry, ran: list[float] | None = None,
               host: Host | None = None) -> None:
        call.done = True
        self.counts.actor_call_ended(call.spec, failed=True)
        self.events.actor_call_failed(call.spec, entry, "failed", ran, host)
        self._release(call)
        for oid in call.return_ids:
            self.ownership.store_owned_result(oid, entry)

    def _fail(self, call: ActorCall, error: BaseException) -> None:
        if call.done:
            return
        self._store(call, (INLINE, serialization.serialize_error(error).to_inline()))

    def _release(self, call: ActorCall) -> None:
        if call.arg_ids:
            self.ownership.counter.remove_submitted(call.arg_ids)
