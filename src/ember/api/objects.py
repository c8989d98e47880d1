"""``get``, ``put``, ``wait`` and ``cancel``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ember._private import runtime
from ember._private.object_ref import ObjectRef


def _worker() -> Any:
    worker = runtime.core_worker_or_none()
    if worker is None:
        from ember.api.init import init

        init()
        worker = runtime.core_worker()
    return worker


def put(value: Any, *, _owner: Any = None) -> ObjectRef:
    """Store ``value`` in the cluster and return a ref to it."""
    worker = _worker()
    if _owner is not None:
        from ember.api.actor import ActorHandle

        if not isinstance(_owner, ActorHandle):
            raise TypeError(f"put(_owner=) expects an actor handle, got {type(_owner).__name__}")
        # The actor stores the value and owns it, so the value outlives this process.
        ref: ObjectRef = get(_owner.__ember_put__.remote(value))[0]
        return ref
    put_ref: ObjectRef = worker.put(value)
    return put_ref


def get(object_refs: ObjectRef | Sequence[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value(s) behind one ref or a list of refs, waiting up to ``timeout`` seconds.

    Raises:
        GetTimeoutError: not ready within ``timeout`` (also a ``TimeoutError``).
        RayTaskError: the task raised; also an instance of the original exception's class.
    """
    worker = _worker()
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout= must be None or >= 0, got {timeout!r}")
    if isinstance(object_refs, ObjectRef):
        return worker.get([object_refs], timeout)[0]
    if not isinstance(object_refs, (list, tuple)):
        raise TypeError(
            f"get() expects an ObjectRef or a list of ObjectRefs, got {type(object_refs).__name__}."
        )
    refs = list(object_refs)
    for i, ref in enumerate(refs):
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"get() expects a list of ObjectRefs, but element {i} is a {type(ref).__name__}.")
    return worker.get(refs, timeout)


def wait(
    object_refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until ``num_returns`` refs are ready or ``timeout`` passes.

    Returns (ready, not_ready), each in the order of ``object_refs``.
    """
    from ember.core.generator_stream import ObjectRefGenerator, wait_with_generators

    worker = _worker()
    if isinstance(object_refs, (ObjectRef, ObjectRefGenerator)) or not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expects a list of ObjectRefs, got {type(object_refs).__name__}.")
    refs = list(object_refs)
    generators = 0
    for ref in refs:
        if isinstance(ref, ObjectRefGenerator):
            generators += 1
        elif not isinstance(ref, ObjectRef):
            raise TypeError(f"wait() expects a list of ObjectRefs, got an element of type {type(ref).__name__}.")
    if not refs:
        return [], []  # as Ray: nothing to wait for, whatever num_returns says
    if len({r.binary() if isinstance(r, ObjectRef) else id(r) for r in refs}) != len(refs):
        raise ValueError("wait() requires a list of unique ObjectRefs.")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"num_returns= must be a positive integer, got {num_returns!r}.")
    if num_returns > len(refs):
        raise ValueError(
            f"num_returns={num_returns} is larger than the number of refs passed ({len(refs)})."
        )
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout= must be None or >= 0, got {timeout!r}")
    if generators:
        # A generator is ready when its next item (or its end) is.
        return wait_with_generators(worker, refs, num_returns, timeout)
    ready_and_not: tuple[list[ObjectRef], list[ObjectRef]] = worker.wait(refs, num_returns, timeout, fetch_local)
    return ready_and_not


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that creates ``object_ref``; ``get`` then raises ``TaskCancelledError``.

    An ``ObjectRefGenerator`` cancels its generator task: items already sent stay readable,
    and the iteration then ends with the cancellation error."""
    from ember.core.generator_stream import ObjectRefGenerator

    if isinstance(object_ref, ObjectRefGenerator):
        object_ref = object_ref.completed()
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(object_ref).__name__}.")
    _worker().cancel(object_ref, force, recursive)
