"""Running an actor inside its worker process.

Three ways to run calls, chosen from the class when the actor is created:

* ``sync``     — calls run one at a time, in arrival order, on the main thread
                 (arrival order is submission order per caller: each caller
                 pushes over one connection, in order);
* ``threaded`` — ``max_concurrency > 1`` or concurrency groups: each group has
                 a thread pool of its size;
* ``async``    — the class has ``async def`` methods: calls are coroutines on an
                 event loop in the main thread, limited per group by semaphores
                 (default limit 1000).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ember._private.background import BackgroundTasks
from ember._private.config import config
from ember._private.object_ref import ObjectRef
from ember.core import metrics_recorder
from ember.core.generator_stream import run_generator, run_generator_async
from ember.core.task_executor import ActorExit, Cancelled, Item
from ember.protocol.core_worker import ActorCallSpec, ActorCreationPush, CallSpec, PushReply

if TYPE_CHECKING:
    from ember.core.task_executor import TaskExecutor

DEFAULT_GROUP = "_ember_default_group"


class ActorRuntime:
    def __init__(self, executor: TaskExecutor, spec: ActorCreationPush) -> None:
        self.executor = executor
        self.worker = executor.worker
        self.spec = spec
        self.instance: Any = None
        self.mode = "sync"
        self.accepts_direct_calls = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._method_groups: dict[str, str] = spec.get("method_groups") or {}
        self._exiting = False
        #: Calls running as coroutines on an async actor's loop (it lives as long as the process).
        self._async_calls = BackgroundTasks("async actor calls")
        #: Running calls of an async actor by task id, for ``ember.cancel``.
        self._running_coroutines: dict[bytes, asyncio.Task[Any]] = {}

    # ================================================================ creation
    def construct(self) -> PushReply:
        spec = self.spec
        worker = self.worker
        name = f"{spec['class_name']}.__init__"
        # The constructor runs as the actor's creation task (its context, events and counts).
        creation: CallSpec = {"tid": _creation_task_id(spec), "job": spec["job"], "name": name, "args": spec["args"],
                              "kw": spec["kw"], "nret": 0, "rids": [], "owner": spec["owner"]}
        try:
            cls = worker.function_manager.load(spec["fid"], spec["job"])
            worker.actor_id = spec["actor_id"]
            worker.context.actor_placement_group = spec.get("pg_group")
            worker.actor_spec = spec
            worker.assigned_resources = spec.get("res") or {}
            worker.set_gpu_ids(spec.get("gpus"))
            worker.set_task_context(creation)
            self.executor.mark(spec["job"].hex(), spec["class_name"])
            args, kwargs = self.executor.decode_args(spec["args"], spec["kw"])
            if inspect.iscoroutinefunction(getattr(cls, "__init__", None)):
                # ``async def __init__``: the constructor awaits on the actor's own event loop.
                instance = cls.__new__(cls)
                self._event_loop().run_until_complete(instance.__init__(*args, **kwargs))
                self.instance = instance
            else:
                self.instance = cls(*args, **kwargs)
        except ActorExit:
            error = RuntimeError("exit_actor() was called in __init__")
            worker.task_events.actor_constructed(_creation_task_id(spec), spec, error)
            return {"s": "err", "e": self.executor.error_reply(name, error)["e"]}
        except Exception as exc:
            worker.task_events.actor_constructed(_creation_task_id(spec), spec, exc)
            return self.executor.error_reply(name, exc)
        finally:
            worker.clear_task_context()
            sys.stdout.flush()
            sys.stderr.flush()
        groups = spec.get("concurrency_groups") or {}
        max_concurrency = spec.get("max_concurrency")
        if spec.get("is_async"):
            self.mode = "async"
        elif (max_concurrency or 1) > 1 or groups:
            self.mode = "threaded"
        self._group_sizes = {DEFAULT_GROUP: max_concurrency or (1000 if self.mode == "async" else 1), **groups}
        worker.task_events.actor_constructed(_creation_task_id(spec), spec, None)
        return {"s": "ok"}

    # ================================================================ main thread
    def run(self, take_queued: Callable[[bool], Item | None]) -> None:
        if self.mode == "sync":
            while True:
                item = take_queued(True)
                if item is None:
                    return
                _, spec, fut = item
                self.executor.reply(fut, self._invoke(cast(ActorCallSpec, spec)))
        elif self.mode == "threaded":
            self._pools = {
                group: concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix=f"ember-actor-{group}")
                for group, size in self._group_sizes.items()
            }
            self._drain(take_queued)
            self.accepts_direct_calls = True
            self._drain(take_queued)
            threading.Event().wait()  # the pools do the work from here on
        else:
            loop = self._event_loop()
            self._semaphores = {group: asyncio.Semaphore(size) for group, size in self._group_sizes.items()}
            self._drain(take_queued)
            self.accepts_direct_calls = True
            loop.call_soon(self._drain, take_queued)
            loop.run_forever()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The async actor's event loop, in the main thread (made at the first need)."""
        if self.loop is None:
            from ember.rpc.loop_thread import new_event_loop

            self.loop = new_event_loop()
            asyncio.set_event_loop(self.loop)
        return self.loop

    def _drain(self, take_queued: Callable[[bool], Item | None]) -> None:
        while True:
            item = take_queued(False)
            if item is None:
                return
            self._dispatch(cast(ActorCallSpec, item[1]), item[2])

    def submit(self, spec: ActorCallSpec, fut: asyncio.Future[PushReply]) -> None:
        """From the I/O thread, once ``accepts_direct_calls`` is set."""
        if self.mode == "async":
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._dispatch, spec, fut)
        else:
            self._dispatch(spec, fut)

    def _group_of(self, spec: ActorCallSpec) -> str:
        group = spec.get("cg") or self._method_groups.get(spec["m"]) or DEFAULT_GROUP
        return group if group in self._group_sizes else DEFAULT_GROUP

    def _dispatch(self, spec: ActorCallSpec, fut: asyncio.Future[PushReply]) -> None:
        if self.mode == "async":
            assert self.loop is not None
            self._async_calls.spawn(self._invoke_async(spec, fut), spec["m"], loop=self.loop)
        else:
            pool = self._pools[self._group_of(spec)]
            pool.submit(lambda: self.executor.reply(fut, self._invoke(spec)))

    # ================================================================ one call
    def _method(self, spec: ActorCallSpec) -> Any:
        name = spec["m"]
        if name == "__ray_ready__":
            return lambda: True
        if name == "__ember_put__":
            # put(value, _owner=actor): this actor becomes the value's owner.
            return lambda value: [self.worker.put(value)]
        if name == "__ray_terminate__":
            def terminate() -> None:
                raise ActorExit()
            return terminate
        return getattr(self.instance, name)

    def cancel(self, task_id: bytes) -> None:
        """From the I/O thread: ``ember.cancel`` of a call. A queued call is not run (each call
        checks the executor's record first); a running coroutine is cancelled; a running sync or
        threaded call goes on (as in Ray) and sees ``is_canceled()``."""
        task = self._running_coroutines.get(task_id)
        if task is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(task.cancel)

    def _invoke(self, spec: ActorCallSpec) -> PushReply:
        if self.executor.was_cancelled(spec["tid"]):
            return {"s": "cancelled"}
        self.worker.set_task_context(spec, spec["aid"])
        try:
            reply = self._call(spec)
        finally:
            ran = self.worker.clear_task_context()
        if ran is not None:
            reply["t"] = ran
        return reply

    def _call(self, spec: ActorCallSpec) -> PushReply:
        worker = self.worker
        self.executor.mark(spec["job"].hex(), spec["name"])
        try:
            method = self._method(spec)
            args, kwargs = self.executor.decode_args(spec["args"], spec["kw"])
            result = method(*args, **kwargs)
            if inspect.isawaitable(result) and not isinstance(result, ObjectRef):
                raise TypeError(f"{spec['name']} returned an awaitable in a synchronous actor")
            if spec.get("gen"):
                result = run_generator(worker, spec, result)
            if self.executor.was_cancelled(spec["tid"]):
                return {"s": "cancelled"}  # as Ray: a call cancelled while it ran reads as cancelled
            return self.executor.encode_result(spec, result)
        except Cancelled:
            return {"s": "cancelled"}
        except ActorExit:
            self._exit()
            return {"s": "exit"}
        except Exception as exc:
            return self.executor.error_reply(spec["name"], exc)

    async def _invoke_async(self, spec: ActorCallSpec, fut: asyncio.Future[PushReply]) -> None:
        task_id = spec["tid"]
        if self.executor.was_cancelled(task_id):
            self.executor.reply(fut, {"s": "cancelled"})
            return
        current = asyncio.current_task()
        if current is not None:
            self._running_coroutines[task_id] = current
        try:
            await self._run_async_call(spec, fut)
        except (asyncio.CancelledError, Cancelled):
            self.executor.reply(fut, {"s": "cancelled"})
        finally:
            self._running_coroutines.pop(task_id, None)

    async def _run_async_call(self, spec: ActorCallSpec, fut: asyncio.Future[PushReply]) -> None:
        semaphore = self._semaphores[self._group_of(spec)]
        async with semaphore:
            self.worker.set_task_context(spec, spec["aid"])
            self.executor.mark(spec["job"].hex(), spec["name"])
            try:
                method = self._method(spec)
                args, kwargs = self.executor.decode_args(spec["args"], spec["kw"])
                result = method(*args, **kwargs)
                if inspect.isawaitable(result) and not isinstance(result, ObjectRef):
                    result = await result
                if spec.get("gen"):
                    result = await run_generator_async(self.worker, spec, result)
                reply = self.executor.encode_result(spec, result)
            except ActorExit:
                self._exit()
                reply = {"s": "exit"}
            except Exception as exc:
                reply = self.executor.error_reply(spec["name"], exc)
            finally:
                ran = self.worker.clear_task_context()
        if ran is not None:
            reply["t"] = ran
        self.executor.reply(fut, reply)

    # ================================================================ exit
    def _exit(self) -> None:
        """exit_actor(): mark the actor dead for good, then end the process after the reply."""
        if self._exiting:
            return
        self._exiting = True
        worker = self.worker

        async def finish() -> None:
            try:
                await worker.gcs_request(
                    "kill_actor",
                    {"actor_id": self.spec["actor_id"], "no_restart": True, "cause": "the actor called exit_actor()"},
                    timeout=config().actor_exit_timeout_s,
                )
            finally:
                metrics_recorder.flush_if_used(worker)
                await asyncio.sleep(0)  # the batch goes out with this loop iteration's writes
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)

        worker.loop.call_soon_threadsafe(lambda: worker.background.spawn(finish(), "exit the actor", loop=worker.loop))


def _creation_task_id(spec: ActorCreationPush) -> bytes:
    actor_id: bytes = spec["actor_id"]
    job_id: bytes = spec["job"]
    return actor_id[:12] + job_id
