"""``ActorPool``: spread work over a fixed set of actors (Ray's ``ray.util.ActorPool``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ember
from ember._private.object_ref import ObjectRef


class ActorPool:
    """Hands values to whichever actor is free, and collects results in order or as they finish.

    ``fn(actor, value)`` must submit one call and return its ObjectRef, e.g.
    ``lambda a, v: a.double.remote(v)``.
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: list[Any] = list(actors)
        self._busy: dict[ObjectRef, tuple[int, Any]] = {}
        self._by_index: dict[int, ObjectRef] = {}
        self._next_submit = 0
        self._next_return = 0
        self._waiting: list[tuple[Callable[[Any, Any], ObjectRef], Any]] = []

    # ------------------------------------------------------------- submitting
    def submit(self, fn: Callable[[Any, Any], ObjectRef], value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor now, or as soon as one is free."""
        if not self._idle:
            self._waiting.append((fn, value))
            return
        actor = self._idle.pop()
        ref = fn(actor, value)
        if not isinstance(ref, ObjectRef):
            self._idle.append(actor)
            raise TypeError(f"the function given to ActorPool must return an ObjectRef, got {type(ref).__name__}")
        self._busy[ref] = (self._next_submit, actor)
        self._by_index[self._next_submit] = ref
        self._next_submit += 1

    def map(self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn`` over ``values``, in the order of ``values``."""
        self._drain_unordered()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: Callable[[Any, Any], ObjectRef], values: Iterable[Any]) -> Iterator[Any]:
        """Results of ``fn`` over ``values``, in the order they finish."""
        self._drain_unordered()
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _drain_unordered(self) -> None:
        while self.has_next():
            self.get_next_unordered()

    # ------------------------------------------------------------- collecting
    def has_next(self) -> bool:
        """Whether results are still to be collected."""
        return bool(self._busy)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        while self._next_return not in self._by_index:
            self._next_return += 1  # taken out of order by get_next_unordered
        ref = self._by_index[self._next_return]
        ready, _ = ember.wait([ref], timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                self._next_return += 1
                self._forget(ref)
                return None
            raise TimeoutError("Timed out waiting for result")
        self._next_return += 1
        self._forget(ref)
        return ember.get(ref)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Whichever result is ready first."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        ready, _ = ember.wait(list(self._busy), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError("Timed out waiting for result")
        ref = ready[0]
        self._forget(ref)
        return ember.get(ref)

    def _forget(self, ref: ObjectRef) -> None:
        index, actor = self._busy.pop(ref)
        self._by_index.pop(index, None)
        self._return_actor(actor)

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._waiting:
            self.submit(*self._waiting.pop(0))

    # ------------------------------------------------------------- membership
    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self) -> Any:
        """Remove and return an idle actor, or None if none is idle."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool."""
        if actor in self._idle or any(a == actor for _, a in self._busy.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
