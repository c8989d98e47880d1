"""Executing tasks and actor calls in a worker process.

Pushed work arrives on the I/O loop and waits in a queue; the process's main
thread takes it. A plain worker runs tasks one at a time. Once a worker
hosts an actor (``create_actor``), it runs the actor's calls: in order on
the main thread for a synchronous actor, on thread pools for a threaded one
(``max_concurrency > 1`` or concurrency groups), or as coroutines on an
event loop in the main thread for an async actor.

When a running *task* blocks in ``get``, queued tasks are bounced back to
their submitters (``requeue``) so that nothing waits behind a task that may
be waiting for them. Actor calls are never bounced: their order matters.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
import threading
import traceback
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from ember._private import serialization
from ember.core.task_manager import ARG_PLASMA, ARG_REF, ARG_VALUE
from ember.exceptions import RayTaskError
from ember.protocol.core_worker import (
    ActorCallSpec,
    ActorCreationPush,
    CallSpec,
    PushReply,
    TaskSpec,
)

if TYPE_CHECKING:
    from ember.core.actor_runtime import ActorRuntime
    from ember.core.worker import CoreWorker

MARKER = ":ember_task:"

TASK = 0
CREATE_ACTOR = 1
ACTOR_CALL = 2


class Cancelled(BaseException):
    """Raised inside a running task by ``ember.cancel``; not an Exception, so user code rarely swallows it."""


class ArgumentLost(Exception):
    """An argument's stored copy is gone: the submitter must recover it and resend the task."""

    def __init__(self, object_id: bytes, owner: Any) -> None:
        super().__init__(object_id.hex())
        self.object_id = object_id
        self.owner = owner


class ActorExit(BaseException):
    """Raised by ``exit_actor()``: end this actor once the current call has replied."""


#: Any pushed spec; its kind (TASK, CREATE_ACTOR, ACTOR_CALL) says which.
PushedSpec = TaskSpec | ActorCallSpec | ActorCreationPush
Item = tuple[int, PushedSpec, "asyncio.Future[PushReply]"]


class TaskExecutor:
    def __init__(self, worker: CoreWorker) -> None:
        self.worker = worker
        self._queue: deque[Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self.running: TaskSpec | None = None
        self._cancel_target: bytes | None = None
        self._last_marker: tuple[str, str] | None = None
        self._stopped = False
        self.actor: ActorRuntime | None = None
        self._replies: deque[tuple[asyncio.Future[PushReply], PushReply]] = deque()
        self._reply_scheduled = False
        #: Recent pushes by task id: (attempt, future), to answer duplicates without running them again.
        self._seen: dict[bytes, tuple[int, asyncio.Future[PushReply]]] = {}
        self._expected_seq: dict[bytes, int] = {}
        self._held_calls: dict[bytes, dict[int, tuple[ActorCallSpec, asyncio.Future[PushReply]]]] = {}
        #: Tasks ``ember.cancel`` was called on while they ran (for ``RuntimeContext.is_canceled``).
        self._cancelled: dict[bytes, None] = {}

    # ================================================================ I/O loop side
    def push(self, kind: int, spec: PushedSpec) -> asyncio.Future[PushReply]:
        if kind != CREATE_ACTOR:
            call = cast(CallSpec, spec)
            # A resent push (a lost reply, a retrying client) gets the first one's answer: no second run.
            seen = self._seen.get(call["tid"])
            if seen is not None and seen[0] == call.get("attempt", 0):
                return seen[1]
        fut: asyncio.Future[PushReply] = self.worker.loop.create_future()
        ready: Sequence[tuple[PushedSpec, asyncio.Future[PushReply]]] = [(spec, fut)]
        if kind != CREATE_ACTOR:
            self._seen[call["tid"]] = (call.get("attempt", 0), fut)
            if len(self._seen) > 10000:
                self._seen.pop(next(iter(self._seen)))
            if kind == ACTOR_CALL:
                ready = self._in_caller_order(cast(ActorCallSpec, spec), fut)
        actor = self.actor
        if kind == ACTOR_CALL and actor is not None and actor.accepts_direct_calls:
            for item_spec, item_fut in ready:
                actor.submit(cast(ActorCallSpec, item_spec), item_fut)
            return fut
        with self._cond:
            for item_spec, item_fut in ready:
                self._queue.append((kind, item_spec, item_fut))
            self._cond.notify()
        return fut

    def _in_caller_order(self, spec: ActorCallSpec, fut: asyncio.Future[PushReply]
                         ) -> list[tuple[ActorCallSpec, asyncio.Future[PushReply]]]:
        """Hold a call that overtook an earlier one from the same caller; release calls in sequence."""
        caller, seq = spec.get("caller"), spec.get("seq")
        if caller is None or seq is None:
            return [(spec, fut)]
        expected = self._expected_seq.get(caller)
        if expected is None or spec.get("seq_base", seq) > expected:
            expected = spec.get("seq_base", seq)
        if seq < expected:
            return [(spec, fut)]  # an old call resent: nothing to wait for
        held = self._held_calls.setdefault(caller, {})
        held[seq] = (spec, fut)
        ready = []
        while expected in held:
            ready.append(held.pop(expected))
            expected += 1
        self._expected_seq[caller] = expected
        return ready

    def was_cancelled(self, task_id: bytes) -> bool:
        return task_id in self._cancelled

    def cancel(self, task_id: bytes) -> None:
        self._cancelled[task_id] = None
        if len(self._cancelled) > 1000:
            self._cancelled.pop(next(iter(self._cancelled)))
        with self._cond:
            for item in list(self._queue):
                if item[0] != CREATE_ACTOR and cast(CallSpec, item[1])["tid"] == task_id:
                    self._queue.remove(item)
                    if not item[2].done():
                        item[2].set_result({"s": "cancelled"})
                    return
            running = self.running
            if running is not None and running["tid"] == task_id:
                self._cancel_target = task_id
                os.kill(os.getpid(), signal.SIGINT)
                return
        if self.actor is not None:
            self.actor.cancel(task_id)

    # ================================================================ main thread side
    def run_forever(self) -> None:
        signal.signal(signal.SIGINT, self._on_sigint)
        while True:
            item = self._next()
            if item is None:
                return
            kind, spec, fut = item
            if kind == TASK:
                task = cast(TaskSpec, spec)
                with self._cond:
                    self.running = task
                reply = self.execute(task)
                with self._cond:
                    self.running = None
                    self._cancel_target = None
                self.reply(fut, reply)
            elif kind == CREATE_ACTOR:
                from ember.core.actor_runtime import ActorRuntime

                runtime = ActorRuntime(self, cast(ActorCreationPush, spec))
                reply = runtime.construct()
                if reply["s"] == "ok":
                    self.actor = runtime
                self.reply(fut, reply)
                if reply["s"] == "ok":
                    # The actor now owns the main thread and drains the queue its own way.
                    runtime.run(self._take_queued)
                    return
            else:
                self.reply(fut, {"s": "err", "e": _not_an_actor_error()})

    def _next(self) -> Item | None:
        with self._cond:
            while not self._queue:
                if self._stopped:
                    return None
                self._cond.wait()
            return self._queue.popleft()

    def _take_queued(self, block: bool) -> Item | None:
        """For actor runtimes: the next queued item (waiting for one if ``block``)."""
        with self._cond:
            while not self._queue:
                if not block or self._stopped:
                    return None
                self._cond.wait()
            return self._queue.popleft()

    def reply(self, fut: asyncio.Future[PushReply], reply: PushReply) -> None:
        """Hand a reply to the I/O loop; replies made while it is busy share one wake-up."""
        self._replies.append((fut, reply))
        if not self._reply_scheduled:
            self._reply_scheduled = True
            self.worker.loop.call_soon_threadsafe(self._drain_replies)

    def _drain_replies(self) -> None:
        self._reply_scheduled = False  # before draining: a reply added meanwhile schedules again
        replies = self._replies
        while replies:
            fut, reply = replies.popleft()
            _resolve(fut, reply)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def bounce_queued(self) -> None:
        """The running task is about to block: give queued tasks back to their submitters."""
        if self.actor is not None:
            return
        with self._cond:
            items = [item for item in self._queue if item[0] == TASK]
            for item in items:
                self._queue.remove(item)
        for _, _, fut in items:
            self.reply(fut, {"s": "requeue"})

    def _on_sigint(self, signum: int, frame: Any) -> None:
        running = self.running
        if running is not None and self._cancel_target == running["tid"]:
            self._cancel_target = None
            raise Cancelled()

    def mark(self, job_hex: str, name: str) -> None:
        """Tell the log monitor which job and function the following output belongs to."""
        key = (job_hex, name)
        if key != self._last_marker:
            self._last_marker = key
            line = f"{MARKER}{job_hex}:{name}\n"
            sys.stdout.write(line)
            sys.stdout.flush()
            sys.stderr.write(line)
            sys.stderr.flush()

    # ================================================================ running one task
    def execute(self, spec: TaskSpec) -> PushReply:
        try:
            reply = self._execute(spec)
        finally:
            ran = self.worker.clear_task_context()
            sys.stdout.flush()
            sys.stderr.flush()
        if ran is not None:
            reply["t"] = ran
        return reply

    def _execute(self, spec: TaskSpec) -> PushReply:
        worker = self.worker
        name = spec["name"]
        try:
            fn = worker.function_manager.load(spec["fid"], spec["job"])
            worker.set_gpu_ids(spec.get("gpus"))
            worker.set_task_context(spec)
            worker.assigned_resources = spec.get("res") or {}
            self.mark(spec["job"].hex(), name)
            args, kwargs = self.decode_args(spec["args"], spec["kw"])
            result = fn(*args, **kwargs)
            if spec.get("gen"):
                from ember.core.generator_stream import run_generator

                result = run_generator(worker, spec, result)
            return self.encode_result(spec, result)
        except (Cancelled, KeyboardInterrupt):
            return {"s": "cancelled"}
        except ArgumentLost as lost:
            return {"s": "arg_lost", "oid": lost.object_id, "owner": lost.owner}
        except Exception as exc:
            return self.error_reply(name, exc)

    def decode_args(self, wire_args: list[list[Any]], kw_names: list[str]) -> tuple[list[Any], dict[str, Any]]:
        """The arguments of a call in wire form (``args``, ``kw`` of its spec) as Python values."""
        args = [self._decode_arg(a) for a in wire_args]
        self.worker.ownership.register_borrows()  # refs nested in the arguments
        if not kw_names:
            return args, {}
        split = len(args) - len(kw_names)
        return args[:split], dict(zip(kw_names, args[split:]))

    def encode_result(self, spec: CallSpec, result: Any) -> PushReply:
        values = _split_returns(result, spec["nret"], spec["name"])
        owner = spec["owner"]
        encode = self.worker.objects.encode_return
        task_id = spec["tid"]
        return {"s": "ok", "r": [encode(oid, value, owner, task_id) for oid, value in zip(spec["rids"], values)]}

    def error_reply(self, name: str, exc: BaseException) -> PushReply:
        tb = exc.__traceback__
        # Drop Ember's own frames so the traceback starts in user code.
        while tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("ember.core"):
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        worker = self.worker
        error = RayTaskError(name, text, exc, os.getpid(), worker.node_ip, worker.node_id.hex())
        return {"s": "err", "e": serialization.serialize_error(error).to_inline()}

    def _decode_arg(self, arg: list[Any]) -> Any:
        kind = arg[0]
        if kind == ARG_VALUE:
            flags, value = serialization.deserialize_inline(arg[1])
            if flags == serialization.FLAG_ERROR:
                raise value
            return value
        if kind == ARG_PLASMA:
            from ember.core.object_access import CopyLost

            try:
                return self.worker.objects.read_plasma_value(arg[1], arg[3], raise_errors=True)
            except CopyLost as exc:
                raise ArgumentLost(arg[1], arg[2]) from exc
        if kind == ARG_REF:
            from ember._private.object_ref import ObjectRef

            return self.worker.get([ObjectRef(arg[1], arg[2])], None)[0]
        raise ValueError(f"unknown argument kind {kind!r}")


def _not_an_actor_error() -> list[Any]:
    from ember.exceptions import RaySystemError

    err = RaySystemError("this worker does not host an actor (it may have been restarted)")
    return serialization.serialize_error(err).to_inline()


def _resolve(fut: asyncio.Future[PushReply], reply: PushReply) -> None:
    if not fut.done():
        fut.set_result(reply)


def _split_returns(result: Any, num_returns: int, name: str) -> list[Any]:
    if inspect.isgenerator(result) and num_returns >= 1:
        items: list[Any] = list(result)  # a generator with a fixed num_returns: its items are the returns (as Ray)
        if num_returns == 1:
            if len(items) != 1:
                raise ValueError(f"{name}() was declared with num_returns=1 but yielded {len(items)} values")
            return items
        result = items
    if num_returns == 1:
        return [result]
    if num_returns == 0:
        return []
    try:
        values = list(result)
    except TypeError:
        raise ValueError(
            f"{name}() was declared with num_returns={num_returns} but returned a "
            f"{type(result).__name__}, which is not a sequence"
        ) from None
    if len(values) != num_returns:
        raise ValueError(f"{name}() was declared with num_returns={num_returns} but returned {len(values)} values")
    return values
