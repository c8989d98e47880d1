"""``ActorPool``: spread work over a fixed set of actors (Ray's ``ray.util.ActorPool``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Union

import ember
from ember._private.object_ref import ObjectRef

_Key = Union[ObjectRef, tuple[ObjectRef, ...]]


def _refs_of(key: _Key) -> list[ObjectRef]:
    return list(key) if isinstance(key, tuple) else [key]


def _value_of(key: _Key) -> Any:
    return ember.get(list(key)) if isinstance(key, tuple) else ember.get(key)


class ActorPool:
    """Hands values to whichever actor is free, and collects results in order or as they finish.

    ``fn(actor, value)`` must submit one call and return its ObjectRef, e.g.
    ``lambda a, v: a.double.remote(v)``, or its list of ObjectRefs (a method with
    ``num_returns`` > 1); the result is then the list of values.
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: list[Any] = list(actors)
        #: Pending results by key (a ref, or a tuple of refs for a call with several returns).
        self._busy: dict[_Key, tuple[int, Any]] = {}
        self._by_index: dict[int, _Key] = {}
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
        result = fn(actor, value)
        if isinstance(result, ObjectRef):
            key: _Key = result
        elif isinstance(result, list) and result and all(isinstance(r, ObjectRef) for r in result):
            key = tuple(result)
        else:
            self._idle.append(actor)
            raise TypeError(
                f"the function given to ActorPool must return an ObjectRef or a list of them, got {type(result).__name__}"
            )
        self._busy[key] = (self._next_submit, actor)
        self._by_index[self._next_submit] = key
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
        key = self._by_index[self._next_return]
        refs = _refs_of(key)
        ready, _ = ember.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            if ignore_if_timedout:
                self._next_return += 1
                self._forget(key)
                return None
            raise TimeoutError("Timed out waiting for result")
        self._next_return += 1
        self._forget(key)
        return _value_of(key)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Whichever result is ready first."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        key = self._first_ready(timeout)
        if key is None:
            if ignore_if_timedout:
                return None
            raise TimeoutError("Timed out waiting for result")
        self._forget(key)
        return _value_of(key)

    def _first_ready(self, timeout: float | None) -> _Key | None:
        """The first pending result whose refs are all ready, waiting up to ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pending = [ref for key in self._busy for ref in _refs_of(key)]
            done, _ = ember.wait(pending, num_returns=len(pending), timeout=0)
            done_set = set(done)
            for key in self._busy:
                if all(ref in done_set for ref in _refs_of(key)):
                    return key
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            # Wait for one more ref to finish, then look again.
            ember.wait([r for r in pending if r not in done_set], num_returns=1, timeout=remaining)

    def _forget(self, key: _Key) -> None:
        index, actor = self._busy.pop(key)
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
