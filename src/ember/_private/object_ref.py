"""``ObjectRef``: a handle to a value that may not exist yet.

A ref is its object id plus its owner's address. Creating one adds a local
reference in this process's core worker and collecting it removes one; that
is the whole of its bookkeeping. Pickling a ref records it in the active
serialization context, so the owner learns which refs travel inside values.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Generator
from typing import Any

from ember._private import runtime

#: Refs met while serializing, per thread (see ``serialization.serialize``).
_serialization_context = threading.local()


class ObjectRef:
    """A reference to a value in the cluster (Ray's ``ray.ObjectRef``)."""

    __slots__ = ("_id", "_owner", "_counted", "__weakref__")

    def __init__(self, object_id: bytes, owner: Any = None, *, _count: bool = True) -> None:
        self._id = object_id
        # Owner address: [ip, port, worker_id] of the process that owns the value.
        self._owner = owner
        self._counted = False
        if _count:
            worker = runtime.core_worker_or_none()
            if worker is not None:
                worker.reference_counter.add_local_ref(object_id, owner)
                self._counted = True

    def __del__(self) -> None:
        if self._counted:
            worker = runtime.core_worker_or_none()
            if worker is not None:
                worker.reference_counter.remove_local_ref_deferred(self._id)

    # --------------------------------------------------------------- identity
    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> Any:
        from ember._private.ids import TaskID, task_id_of

        return TaskID(task_id_of(self._id))

    def owner_address(self) -> Any:
        return self._owner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    # ---------------------------------------------------------------- pickling
    def __reduce__(self) -> Any:
        refs = getattr(_serialization_context, "refs", None)
        if refs is not None:
            refs.append(self)
        return (_rebuild_ref, (self._id, self._owner))

    def __copy__(self) -> ObjectRef:
        return ObjectRef(self._id, self._owner)

    def __deepcopy__(self, memo: Any) -> ObjectRef:
        return ObjectRef(self._id, self._owner)

    # ---------------------------------------------------------------- futures
    def future(self) -> concurrent.futures.Future[Any]:
        """A ``concurrent.futures.Future`` that resolves to the value."""
        future: concurrent.futures.Future[Any] = runtime.core_worker().get_future(self)
        return future

    def _on_completed(self, py_callback: Callable[[Any], None]) -> None:
        """Call ``py_callback(value)`` once the value is ready (the error object if the task
        failed), on a callback thread (so the callback may itself call ``get``)."""
        future = self.future()

        def done(f: concurrent.futures.Future[Any]) -> None:
            exc = f.exception()
            _callback_thread().submit(py_callback, exc if exc is not None else f.result())

        future.add_done_callback(done)

    def as_future(self) -> asyncio.Future[Any]:
        return asyncio.wrap_future(self.future())

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self.future()).__await__()


_callbacks: concurrent.futures.ThreadPoolExecutor | None = None
_callbacks_lock = threading.Lock()


def _callback_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The thread that runs ``_on_completed`` callbacks (made at the first use)."""
    global _callbacks
    with _callbacks_lock:
        if _callbacks is None:
            _callbacks = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ember-ref-callbacks")
        return _callbacks


def _rebuild_ref(object_id: bytes, owner: Any) -> ObjectRef:
    ref = ObjectRef(object_id, owner)
    worker = runtime.core_worker_or_none()
    if worker is not None:
        worker.reference_counter.on_ref_deserialized(ref)
    return ref


def is_counted(ref: Any) -> bool:
    """Whether a ref met while pickling is reference-counted with its owner.

    Every ObjectRef is; an actor handle is when it knows its creator (it was not
    looked up by name).
    """
    return isinstance(ref, ObjectRef) or getattr(ref, "_owner", None) is not None
