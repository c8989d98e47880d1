"""Executing tasks in a worker process.

Pushed tasks arrive on the I/O loop and wait in a queue; the process's main
thread takes them one at a time, runs the user's function and hands the
reply back to the loop. When the running task blocks in ``get``, queued
tasks are bounced back to their submitters (``requeue``) so that nothing
waits behind a task that may be waiting for them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import traceback
from collections import deque
from typing import TYPE_CHECKING, Any

from ember._private import serialization
from ember.core.task_submitter import ARG_PLASMA, ARG_REF, ARG_VALUE
from ember.exceptions import RayTaskError
from ember.rpc import Connection

if TYPE_CHECKING:
    from ember.core.worker import CoreWorker

MARKER = ":ember_task:"


class _Cancelled(BaseException):
    """Raised inside a running task by ``ember.cancel``; not an Exception so user code rarely swallows it."""


class TaskExecutor:
    def __init__(self, worker: CoreWorker) -> None:
        self.worker = worker
        self._queue: deque[tuple[dict[str, Any], asyncio.Future[Any]]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self.running: dict[str, Any] | None = None
        self._cancel_target: bytes | None = None
        self._last_marker: tuple[str, str] | None = None
        self._stopped = False

    # ================================================================ I/O loop side
    def push(self, conn: Connection, spec: dict[str, Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.worker.loop.create_future()
        with self._cond:
            self._queue.append((spec, fut))
            self._cond.notify()
        return fut

    def cancel(self, task_id: bytes) -> None:
        with self._cond:
            for item in list(self._queue):
                if item[0]["tid"] == task_id:
                    self._queue.remove(item)
                    if not item[1].done():
                        item[1].set_result({"s": "cancelled"})
                    return
            running = self.running
            if running is not None and running["tid"] == task_id:
                self._cancel_target = task_id
                os.kill(os.getpid(), signal.SIGINT)

    # ================================================================ main thread side
    def run_forever(self) -> None:
        signal.signal(signal.SIGINT, self._on_sigint)
        loop = self.worker.loop
        while True:
            with self._cond:
                while not self._queue:
                    if self._stopped:
                        return
                    self._cond.wait()
                spec, fut = self._queue.popleft()
                self.running = spec
            reply = self.execute(spec)
            with self._cond:
                self.running = None
                self._cancel_target = None
            loop.call_soon_threadsafe(_resolve, fut, reply)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def bounce_queued(self) -> None:
        """The running task is about to block: give queued tasks back to their submitters."""
        with self._cond:
            items = list(self._queue)
            self._queue.clear()
        loop = self.worker.loop
        for _, fut in items:
            loop.call_soon_threadsafe(_resolve, fut, {"s": "requeue"})

    def _on_sigint(self, signum: int, frame: Any) -> None:
        running = self.running
        if running is not None and self._cancel_target == running["tid"]:
            self._cancel_target = None
            raise _Cancelled()

    def _mark(self, job_hex: str, name: str) -> None:
        key = (job_hex, name)
        if key != self._last_marker:
            self._last_marker = key
            line = f"{MARKER}{job_hex}:{name}\n"
            sys.stdout.write(line)
            sys.stdout.flush()
            sys.stderr.write(line)
            sys.stderr.flush()

    def execute(self, spec: dict[str, Any]) -> dict[str, Any]:
        worker = self.worker
        name = spec["name"]
        try:
            fn = worker.function_manager.load(spec["fid"], spec["job"])
            worker.set_task_context(spec)
            self._mark(spec["job"].hex(), name)
            args = [self._decode_arg(a) for a in spec["args"]]
            kw_names = spec.get("kw") or ()
            if kw_names:
                split = len(args) - len(kw_names)
                kwargs = dict(zip(kw_names, args[split:]))
                args = args[:split]
            else:
                kwargs = {}
            result = fn(*args, **kwargs)
            values = _split_returns(result, spec["nret"], name)
            owner = spec["owner"]
            returns = [worker.encode_return(oid, value, owner) for oid, value in zip(spec["rids"], values)]
            return {"s": "ok", "r": returns}
        except _Cancelled:
            return {"s": "cancelled"}
        except KeyboardInterrupt:
            return {"s": "cancelled"}
        except Exception as exc:
            tb = exc.__traceback__
            # Drop this frame so the traceback starts in user code.
            if tb is not None and tb.tb_frame.f_code is TaskExecutor.execute.__code__:
                tb = tb.tb_next
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            error = RayTaskError(name, text, exc, os.getpid(), worker.node_ip, worker.node_id.hex())
            return {"s": "err", "e": serialization.serialize_error(error).to_inline()}
        finally:
            worker.clear_task_context()
            sys.stdout.flush()
            sys.stderr.flush()

    def _decode_arg(self, arg: list[Any]) -> Any:
        kind = arg[0]
        if kind == ARG_VALUE:
            return serialization.deserialize_inline(arg[1])[1]
        if kind == ARG_PLASMA:
            return self.worker.read_plasma_value(arg[1], arg[3], raise_errors=True)
        if kind == ARG_REF:
            from ember._private.object_ref import ObjectRef

            return self.worker.get([ObjectRef(arg[1], arg[2])], None)[0]
        raise ValueError(f"unknown argument kind {kind!r}")


def _resolve(fut: asyncio.Future[Any], reply: dict[str, Any]) -> None:
    if not fut.done():
        fut.set_result(reply)


def _split_returns(result: Any, num_returns: int, name: str) -> list[Any]:
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
