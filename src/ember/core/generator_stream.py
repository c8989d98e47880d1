"""Generator tasks: ``num_returns="streaming"`` (``ObjectRefGenerator``) and ``"dynamic"``.

A generator task (or actor method) sends each item to its caller, the owner, as
soon as it is yielded: one ``generator_item`` request per item, carrying the
item in the same form as a task return (inline, or the location of the copy the
executor wrote to its node's store). The owner records it under the item's
object id (``return_object_id(task_id, index + 2)``; index 1 is the task's own
*completion* return), and answers; the executor waits for the answer before it
runs the generator further, so every item is recorded before the task's reply,
and the owner can hold the answer back for backpressure
(``_generator_backpressure_num_objects``: at most that many items produced and
not yet taken by the consumer).

On the caller, ``ObjectRefGenerator`` hands out the item refs in order: the next
item's ref, or, once the task has finished, its error (a ref that raises, as in
Ray) and then ``StopIteration``. Items are owned by the caller and counted like
any return; items nobody took are freed with the generator.

``num_returns="dynamic"`` streams the same way and then returns one value, a
``DynamicObjectRefGenerator`` holding the refs of every item.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Final

from ember._private import ids, runtime
from ember._private.object_ref import ObjectRef
from ember.protocol.core_worker import CallSpec, GeneratorItem, GeneratorMode

if TYPE_CHECKING:
    from ember.core.worker import CoreWorker

STREAMING: Final = "streaming"
DYNAMIC: Final = "dynamic"
GENERATOR_MODES = (STREAMING, DYNAMIC)


def item_id(task_id: bytes, index: int) -> bytes:
    """The object id of a generator task's ``index``-th item (from 0)."""
    return ids.return_object_id(task_id, index + 2)


class StreamState:
    """The owner's record of one generator task: items received, items taken, the ack gate."""

    def __init__(self, worker: CoreWorker, task_id: bytes, completion: ObjectRef, backpressure: int) -> None:
        self.worker = worker
        self.task_id = task_id
        self.completion = completion
        self.backpressure = backpressure
        #: Item refs received and not yet handed out, by index (they keep the items alive).
        self.items: dict[int, ObjectRef] = {}
        self.received = 0
        #: Items handed to the consumer (the index of the next one).
        self.taken = 0
        #: Answers held back by backpressure: (index, future) on the I/O loop.
        self._held_acks: list[tuple[int, asyncio.Future[Any]]] = []
        self.closed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------ I/O loop side
    def add_item(self, index: int, ret: list[Any], sender: Any) -> Any:
        """Record item ``index`` (a duplicate from a retried attempt is ignored); the answer
        (maybe a future held back for backpressure) lets the executor go on."""
        worker = self.worker
        with self._lock:
            fresh = index >= self.received and not self.closed
            if fresh:
                oid = item_id(self.task_id, index)
                worker.reference_counter.add_owned(oid, worker.address)
                ref = ObjectRef(oid, worker.address)
                self.items[index] = ref
                self.received = index + 1
        if fresh:
            worker.ownership.store_results(self.task_id, [oid], [ret], sender)
        return self._ack(index)

    def _ack(self, index: int) -> Any:
        if not self.backpressure or self.closed or index + 1 - self.taken < self.backpressure:
            return True
        fut: asyncio.Future[Any] = self.worker.loop.create_future()
        self._held_acks.append((index, fut))
        return fut

    def release_acks(self) -> None:
        """On the loop: answer the items the consumer has caught up with (all of them once closed)."""
        still = []
        for index, fut in self._held_acks:
            if self.closed or index + 1 - self.taken < self.backpressure:
                if not fut.done():
                    fut.set_result(True)
            else:
                still.append((index, fut))
        self._held_acks = still

    def validate(self) -> None:
        """Raise ``AssertionError`` if an invariant does not hold (for tests).

        Items waiting for the consumer lie between the next one to take and the last
        received; a closed stream holds none; answers are held back only under backpressure.
        """
        with self._lock:
            problems = []
            if not 0 <= self.taken <= self.received:
                problems.append(f"taken {self.taken}, received {self.received}")
            bad = [i for i in self.items if not self.taken <= i < self.received]
            if bad:
                problems.append(f"items {bad} outside [{self.taken}, {self.received})")
            if self.closed and self.items:
                problems.append("a closed stream still holds items")
            if self._held_acks and not self.backpressure:
                problems.append("answers held back without backpressure")
        if problems:
            raise AssertionError(f"stream {self.task_id.hex()}: " + "; ".join(problems))

    # ----------------------------------------------------------- consumer side
    def take(self, index: int) -> ObjectRef | None:
        with self._lock:
            ref = self.items.pop(index, None)
            if ref is not None:
                self.taken = index + 1
        if ref is not None and self.backpressure:
            self.worker.loop.call_soon_threadsafe(self.release_acks)
        return ref

    def probe(self, index: int) -> ObjectRef:
        """A ref that becomes ready when item ``index`` arrives (the owner records it there)."""
        with self._lock:
            ref = self.items.get(index)
        if ref is not None:
            return ref
        oid = item_id(self.task_id, index)
        self.worker.reference_counter.add_owned(oid, self.worker.address)
        return ObjectRef(oid, self.worker.address)

    def close(self) -> None:
        """The consumer is gone: free the items it never took and let the task run to its end."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.items.clear()
        worker = self.worker
        if not worker.shutting_down:
            worker.loop.call_soon_threadsafe(self._forget)

    def _forget(self) -> None:
        self.release_acks()
        self.worker.generators.pop(self.task_id, None)


class ObjectRefGenerator:
    """What a streaming generator task returns: an iterator of the refs of its items.

    ``next(gen)`` / ``for ref in gen`` / ``async for ref in gen`` give each item's ref as
    soon as the task has yielded it. If the task raised after ``k`` items, the ref after
    the ``k``-th raises that error when read, and the iteration stops after it.
    ``ember.wait([gen])`` is ready when the next ref is; ``ember.cancel(gen)`` cancels the task.
    """

    def __init__(self, state: StreamState) -> None:
        self._state = state
        self._generator_ref = state.completion
        self._index = 0
        self._raised_or_done = False

    # ---------------------------------------------------------------- sync
    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._next(None)

    def _next(self, timeout: float | None) -> ObjectRef:
        if self._raised_or_done:
            raise StopIteration
        state = self._state
        ref = state.take(self._index)
        if ref is None:
            probe = state.probe(self._index)
            worker = state.worker
            ready, _ = worker.wait([probe, state.completion], 1, timeout, True)
            if not ready:
                raise TimeoutError(f"the generator's next item was not ready within {timeout}s")
            ref = state.take(self._index)
            if ref is None:
                return self._at_end()
        self._index += 1
        return ref

    def _at_end(self) -> ObjectRef:
        """The task finished and no item waits: its error as a ref (once), or the end."""
        self._raised_or_done = True
        state = self._state
        state.close()
        try:
            state.worker.get([state.completion], 0)
        except Exception:
            return state.completion  # reading it raises the task's error, as in Ray
        raise StopIteration

    # --------------------------------------------------------------- async
    def __aiter__(self) -> AsyncIterator[ObjectRef]:
        return self

    async def __anext__(self) -> ObjectRef:
        loop = asyncio.get_running_loop()
        ref = await loop.run_in_executor(None, self._next_or_none)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _next_or_none(self) -> ObjectRef | None:
        # StopIteration cannot cross a Future: the end travels as None.
        try:
            return self._next(None)
        except StopIteration:
            return None

    # ------------------------------------------------------------- Ray's API
    def completed(self) -> ObjectRef:
        """A ref that is ready when the task has finished (reading it raises the task's error)."""
        return self._generator_ref

    def is_finished(self) -> bool:
        return self._raised_or_done

    def next_ready(self) -> bool:
        """Whether ``next()`` would return without waiting."""
        state = self._state
        if self._index in state.items:
            return True
        return state.worker.memory_store.contains(state.completion._id)

    def task_id(self) -> Any:
        return ids.TaskID(self._state.task_id)

    def _wait_refs(self) -> list[ObjectRef]:
        """The refs ``ember.wait`` watches for this generator: the next item, or the end."""
        if self._raised_or_done:
            return [self._state.completion]
        return [self._state.probe(self._index), self._state.completion]

    def close(self) -> None:
        self._raised_or_done = True
        self._state.close()

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None and runtime.core_worker_or_none() is state.worker:
            state.close()

    def __reduce__(self) -> Any:
        raise TypeError("An ObjectRefGenerator cannot be passed to another task or actor; pass its item refs instead.")

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._state.task_id.hex()})"


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: the refs of everything it yielded."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"


def wait_with_generators(worker: CoreWorker, items: list[Any], num_returns: int, timeout: float | None) -> tuple[list[Any], list[Any]]:
    """``ember.wait`` over refs and generators: a generator is ready when its next ref is."""

    def refs_of(item: Any) -> list[ObjectRef]:
        return item._wait_refs() if isinstance(item, ObjectRefGenerator) else [item]

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        units = [(item, refs_of(item)) for item in items]
        flat = [r for _, refs in units for r in refs]
        done, pending = worker.wait(flat, len(flat), 0, True)
        done_ids = {r._id for r in done}
        ready = [item for item, refs in units if any(r._id in done_ids for r in refs)][:num_returns]
        remaining = None if deadline is None else deadline - time.monotonic()
        if len(ready) >= num_returns or (remaining is not None and remaining <= 0):
            ready_ids = {id(item) for item in ready}
            return ready, [item for item in items if id(item) not in ready_ids]
        worker.wait(pending, 1, remaining, True)


def generator_mode(num_returns: Any) -> GeneratorMode | None:
    if num_returns == STREAMING:
        return STREAMING
    return DYNAMIC if num_returns == DYNAMIC else None


# ==================================================================== the caller (owner)
def start_stream(worker: CoreWorker, task_id: bytes, completion: ObjectRef, mode: str, backpressure: int) -> Any:
    """Register a submitted generator task; return what ``.remote()`` gives the caller."""
    state = StreamState(worker, task_id, completion, backpressure if backpressure and backpressure > 0 else 0)
    worker.generators[task_id] = state
    if mode == STREAMING:
        return ObjectRefGenerator(state)
    # Dynamic: the completion's value lists the items; once it is recorded (holding them), let go.
    worker.loop.call_soon_threadsafe(worker.memory_store.on_ready, completion._id, lambda _entry: state.close())
    return completion


def on_item(worker: CoreWorker, item: GeneratorItem, sender: Any) -> Any:
    """The ``generator_item`` request, on the owner's loop."""
    state = worker.generators.get(item.task_id)
    ret = item.ret
    if state is None:
        # Nobody consumes this stream any more: drop the item (and its stored copy) at once.
        oid = item_id(item.task_id, item.index)
        if ret[0] != 0:
            worker.ownership.store_owned_result(oid, (ret[0], ret[1]))
        return True
    return state.add_item(item.index, ret, sender)


# ==================================================================== the executor
def _check_iterable(result: Any, name: str) -> None:
    if not (hasattr(result, "__next__") or hasattr(result, "__anext__") or hasattr(result, "__iter__")):
        raise TypeError(
            f"{name}() was submitted as a generator (num_returns='streaming' or 'dynamic') but returned a "
            f"{type(result).__name__}, which is not an iterator"
        )


async def _send_item(worker: CoreWorker, spec: CallSpec, index: int, ret: list[Any]) -> None:
    conn = await worker.connect_to(spec["owner"])
    await conn.call("generator_item", {"tid": spec["tid"], "i": index, "r": ret}, None)


def _encode_item(worker: CoreWorker, spec: CallSpec, index: int, value: Any) -> list[Any]:
    return worker.objects.encode_return(item_id(spec["tid"], index), value, spec["owner"], spec["tid"])


def _final_value(spec: CallSpec, count: int) -> Any:
    if spec["gen"] == DYNAMIC:
        return DynamicObjectRefGenerator([ObjectRef(item_id(spec["tid"], i), spec["owner"]) for i in range(count)])
    return None


def _stop_if_cancelled(worker: CoreWorker, spec: CallSpec) -> None:
    """A cancelled generator sends nothing more (a sync actor's call is not interrupted, but
    its items stop here)."""
    executor = worker.executor
    if executor is not None and executor.was_cancelled(spec["tid"]):
        from ember.core.task_executor import Cancelled

        raise Cancelled()


def run_generator(worker: CoreWorker, spec: CallSpec, result: Any) -> Any:
    """In the executor (a user thread): send every item to the owner; the task's final value."""
    _check_iterable(result, spec["name"])
    assert worker.io is not None
    count = 0
    for value in result:
        _stop_if_cancelled(worker, spec)
        worker.io.run(_send_item(worker, spec, count, _encode_item(worker, spec, count, value)))
        count += 1
    return _final_value(spec, count)


async def run_generator_async(worker: CoreWorker, spec: CallSpec, result: Any) -> Any:
    """In an async actor: the same for an async (or plain) generator, without blocking its loop."""
    _check_iterable(result, spec["name"])
    count = 0

    async def send(value: Any) -> None:
        _stop_if_cancelled(worker, spec)
        ret = _encode_item(worker, spec, count, value)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_send_item(worker, spec, count, ret), worker.loop))

    if hasattr(result, "__anext__"):
        async for value in result:
            await send(value)
            count += 1
    else:
        for value in result:
            await send(value)
            count += 1
    return _final_value(spec, count)


__all__ = [
    "DYNAMIC", "STREAMING", "DynamicObjectRefGenerator", "ObjectRefGenerator", "StreamState", "item_id",
    "wait_with_generators",
]
