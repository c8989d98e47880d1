"""Turning values into bytes and back.

Values are pickled with cloudpickle at protocol 5; buffers that pickle
offers out-of-band (numpy arrays, ``bytes``-likes wrapped in PickleBuffer)
are kept apart so that large ones can be written into shared memory without
an extra copy and read back zero-copy. ObjectRefs met while pickling are
collected so the owner can count them as nested references.

A ``SerializedObject`` has two wire forms:
  * inline, ``[flags, pickle_bytes, [buffer_bytes, ...]]`` inside a message;
  * an object-store file (see ``object_store.file_format``).
"""

from __future__ import annotations

import io
import marshal
import pickle
import threading
import types
from collections import ChainMap
from collections.abc import Callable
from typing import Any

import cloudpickle

from ember._private.object_ref import ObjectRef, _serialization_context

FLAG_VALUE = 0
FLAG_ERROR = 1

_custom_reducers: dict[type, Callable[[Any], Any]] = {}
_lock = threading.Lock()


def register_serializer(cls: type, *, serializer: Callable[[Any], Any], deserializer: Callable[[Any], Any]) -> None:
    """Use ``serializer``/``deserializer`` for instances of ``cls`` in this process.

    The deserializer travels with the value (pickled by value), so the
    receiving process needs no registration.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer() expects a class, got {cls!r}")
    if not callable(serializer) or not callable(deserializer):
        raise TypeError("serializer and deserializer must be callables")

    def reduce(obj: Any) -> Any:
        return (deserializer, (serializer(obj),))

    with _lock:
        _custom_reducers[cls] = reduce


def deregister_serializer(cls: type) -> None:
    with _lock:
        _custom_reducers.pop(cls, None)


def _reduce_code(code: types.CodeType) -> Any:
    """Code objects travel whole, with their file name and line numbers.

    cloudpickle (3.1.3 on) renames the file of code pickled by value to
    ``<dynamic-code>``, so a task's traceback would lose its source lines and
    ``ember memory`` its call sites. Every process of a cluster runs the same
    Python (as with Ray), so the interpreter's own code format is safe to use.
    """
    return marshal.loads, (marshal.dumps(code),)


class _Pickler(cloudpickle.CloudPickler):  # type: ignore[misc]  # cloudpickle ships no types: its base is Any
    dispatch_table = ChainMap({types.CodeType: _reduce_code}, cloudpickle.CloudPickler.dispatch_table)

    def __init__(self, file: Any, buffer_callback: Any, reducers: dict[type, Callable[[Any], Any]] | None = None) -> None:
        # The C pickler reads dispatch_table once, in __init__: set it before.
        if _custom_reducers or reducers:
            self.dispatch_table = ChainMap(reducers or {}, _custom_reducers, self.dispatch_table)
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)


class SerializedObject:
    """A pickled value: the pickle stream, its out-of-band buffers and nested refs."""

    __slots__ = ("flags", "data", "buffers", "nested_refs")

    def __init__(self, flags: int, data: bytes, buffers: list[memoryview], nested_refs: list[ObjectRef]) -> None:
        self.flags = flags
        self.data = data
        self.buffers = buffers
        self.nested_refs = nested_refs

    @property
    def total_bytes(self) -> int:
        return len(self.data) + sum(b.nbytes for b in self.buffers)

    def to_inline(self) -> list[Any]:
        return [self.flags, self.data, [bytes(b) for b in self.buffers]]


def serialize(value: Any, flags: int = FLAG_VALUE, _reducers: dict[type, Callable[[Any], Any]] | None = None) -> SerializedObject:
    """Pickle ``value``; raises the pickler's error (TypeError, PicklingError...) as is."""
    buffers: list[memoryview] = []

    def on_buffer(buf: pickle.PickleBuffer) -> None:
        buffers.append(buf.raw())

    previous = getattr(_serialization_context, "refs", None)
    refs: list[ObjectRef] = []
    _serialization_context.refs = refs
    try:
        stream = io.BytesIO()
        _Pickler(stream, on_buffer, _reducers).dump(value)
        data = stream.getvalue()
    finally:
        _serialization_context.refs = previous
    return SerializedObject(flags, data, buffers, refs)


def _rebuild_exception(cls: type, args: tuple[Any, ...], state: dict[str, Any] | None) -> BaseException:
    try:
        err: BaseException = cls.__new__(cls, *args)
    except Exception:
        err = BaseException.__new__(cls)
    err.args = args
    if state:
        err.__dict__.update(state)
    return err


def _reduce_exception_by_state(err: BaseException) -> Any:
    """Rebuild an exception without calling its ``__init__`` (which may take other arguments than ``args``)."""
    return (_rebuild_exception, (type(err), err.args, dict(err.__dict__) or None))


def _state_reducers(error: BaseException) -> dict[type, Callable[[Any], Any]]:
    from ember.exceptions import RayError

    reducers: dict[type, Callable[[Any], Any]] = {}
    seen: BaseException | None = error
    while isinstance(seen, BaseException):
        if not isinstance(seen, RayError):
            reducers[type(seen)] = _reduce_exception_by_state
        seen = getattr(seen, "cause", None)
    return reducers


def serialize_error(error: BaseException) -> SerializedObject:
    """Pickle an exception to be raised by ``get``; never fails.

    The result must also *unpickle*: an exception whose ``__init__`` takes
    other arguments than its ``args`` pickles fine and fails in the caller's
    ``get``. Such exceptions are pickled by state instead.
    """
    problem: Exception | None = None
    for reducers in (None, _state_reducers(error)):
        try:
            obj = serialize(error, FLAG_ERROR, reducers)
            pickle.loads(obj.data, buffers=obj.buffers)
            return obj
        except Exception as exc:
            problem = problem or exc
    from ember.exceptions import RaySystemError, RayTaskError

    fallback: BaseException
    if isinstance(error, RayTaskError):
        # Keep the task error (function, traceback, pid); only the cause object is lost.
        fallback = RayTaskError(error.function_name, error.traceback_str, None, error.pid, error.ip, error.node_id)
    else:
        fallback = RaySystemError(f"{type(error).__name__}: {error} (the original error could not be pickled: {problem})")
    return serialize(fallback, FLAG_ERROR)


def deserialize(data: bytes | memoryview, buffers: list[Any]) -> Any:
    return pickle.loads(data, buffers=buffers)


def deserialize_inline(inline: list[Any]) -> tuple[int, Any]:
    """(flags, value) from the inline wire form."""
    flags, data, buffers = inline
    return flags, pickle.loads(data, buffers=buffers)


def dumps_function(fn: Any) -> bytes:
    """Pickle a function or class by value (for the function table)."""
    stream = io.BytesIO()
    _Pickler(stream, None).dump(fn)
    return stream.getvalue()


def loads_function(data: bytes) -> Any:
    return pickle.loads(data)
