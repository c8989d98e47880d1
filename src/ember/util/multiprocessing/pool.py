"""``Pool``: the standard library's ``multiprocessing.Pool`` on an Ember cluster.

One actor per pool process (as in Ray's ``ray.util.multiprocessing.Pool``);
work goes to them in chunks (``chunksize`` items per actor call, the standard
library's default size for ``map``), round robin, so a ``map`` over 10,000
small items is a handful of calls rather than 10,000 tasks.

Results and errors follow the standard library: a chunk runs its items in
order and stops at the first exception, which the pool re-raises as the same
exception object (its type, its arguments) with the remote traceback as its
``__cause__``; ``AsyncResult.get(timeout)`` raises
``multiprocessing.TimeoutError``; callbacks run in one result thread per pool,
never on Ember's I/O loop. An actor that dies fails the calls it held with
Ember's ``RayActorError``.

Invariants: ``_state`` moves RUN -> CLOSE -> (joined) or RUN/CLOSE -> TERMINATE,
only forward; every submitted chunk belongs to exactly one ``_Job`` whose
``_remaining`` counts its unfinished chunks; a job completes (and its callback
runs) once, on the result thread.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import multiprocessing.pool
import os
import queue
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from enum import Enum
from typing import Any

import ember
from ember.exceptions import GetTimeoutError
from ember.util._remote_traceback import with_remote_traceback

_OK, _ERR = 0, 1

logger = logging.getLogger(__name__)


class PoolActor:
    """One pool process: runs the initializer once, then chunks of calls."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def ping(self) -> int:
        return os.getpid()

    def run_batch(self, func: Callable[..., Any], batch: list[Any], star: bool) -> tuple[Any, ...]:
        """``(_OK, results)`` or ``(_ERR, exception, traceback text)`` for the first failing item."""
        try:
            if star:
                return (_OK, [func(*args) for args in batch])
            return (_OK, [func(arg) for arg in batch])
        except Exception as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            try:
                import cloudpickle

                cloudpickle.dumps(exc)
            except Exception as pickling_error:
                # As the standard library's MaybeEncodingError: say what could not travel.
                exc = multiprocessing.pool.MaybeEncodingError(exc, pickling_error)  # type: ignore[attr-defined]  # not in typeshed
            return (_ERR, exc, tb)


class _State(Enum):
    RUN = "RUN"
    CLOSE = "CLOSE"
    TERMINATE = "TERMINATE"


def _default_chunksize(n_items: int, processes: int) -> int:
    """The standard library's ``map`` default: about four chunks per process."""
    chunksize, extra = divmod(n_items, processes * 4)
    return chunksize + 1 if extra else max(chunksize, 1)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def _unpack(batch: tuple[Any, ...]) -> list[Any]:
    """A chunk's results, or its error re-raised with the remote traceback as its cause."""
    if batch[0] == _OK:
        results: list[Any] = batch[1]
        return results
    raise with_remote_traceback(batch[1], batch[2])


class AsyncResult:
    """The standard library's ``AsyncResult``: ``get``, ``wait``, ``ready``, ``successful``.

    Holds the futures of its chunks; ``_remaining`` counts unfinished chunks plus one
    token that ``_seal`` releases once every chunk is submitted, so that it cannot
    complete while chunks are still being added.
    """

    def __init__(self, pool: Pool, single: bool, callback: Callable[[Any], Any] | None,
                 error_callback: Callable[[BaseException], Any] | None) -> None:
        self._pool = pool
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._futures: list[Future[Any]] = []
        self._lock = threading.Lock()
        self._remaining = 1
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def _add(self, future: Future[Any]) -> None:
        with self._lock:
            self._remaining += 1
        self._futures.append(future)
        future.add_done_callback(self._chunk_done)

    def _seal(self) -> None:
        self._chunk_done(None)

    def _chunk_done(self, _future: Future[Any] | None) -> None:
        # Runs on Ember's I/O loop for real chunks: only counts and hands over to the result thread.
        with self._lock:
            self._remaining -= 1
            done = self._remaining == 0
        if done:
            self._pool._completed.put(self)

    def _complete(self) -> None:
        """On the pool's result thread, once every chunk is done: the value, then the callback."""
        try:
            values = [v for future in self._futures for v in _unpack(future.result())]
            self._value = values[0] if self._single else values
        except BaseException as exc:  # delivered to get() and error_callback, as the standard library does
            self._error = exc
        self._event.set()
        if self._error is None and self._callback is not None:
            self._callback(self._value)
        elif self._error is not None and self._error_callback is not None:
            self._error_callback(self._error)

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result; re-raises the call's exception; ``multiprocessing.TimeoutError`` after ``timeout``."""
        if not self._event.wait(timeout):
            raise multiprocessing.TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


#: The standard library's name for the result of ``map_async``.
MapResult = AsyncResult


class IMapIterator:
    """Results of ``imap`` (in order) or ``imap_unordered`` (as chunks finish); ``next(timeout)``."""

    def __init__(self, refs: list[ember.ObjectRef], ordered: bool) -> None:
        self._pending = list(refs)
        self._ordered = ordered
        self._buffer: list[Any] = []

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        while not self._buffer:
            if not self._pending:
                raise StopIteration
            if self._ordered:
                ref = self._pending[0]
            else:
                ready, _ = ember.wait(self._pending, num_returns=1, timeout=timeout)
                if not ready:
                    raise multiprocessing.TimeoutError
                ref = ready[0]
            try:
                batch = ember.get(ref, timeout=timeout)
            except GetTimeoutError:
                raise multiprocessing.TimeoutError from None
            self._pending.remove(ref)
            self._buffer = list(reversed(_unpack(batch)))
        return self._buffer.pop()

    __next__ = next


class Pool:
    """A pool of ``processes`` actors with the standard library's ``multiprocessing.Pool`` API.

    Args:
        processes: actors in the pool (default: the cluster's CPUs).
        initializer: called as ``initializer(*initargs)`` once in each actor.
        initargs: arguments of ``initializer``.
        maxtasksperchild: an actor is replaced by a fresh one after this many chunks.
        context: accepted for compatibility; Ember's processes are the cluster's.
        ray_address: the cluster to connect to when Ember is not initialized yet.
        ray_remote_args: options of the actors (``num_cpus``, ``resources``, ...; default: as any actor, placed where a CPU is free, holding none while it runs).
    """

    def __init__(self, processes: int | None = None, initializer: Callable[..., Any] | None = None,
                 initargs: Iterable[Any] | None = None, maxtasksperchild: int | None = None,
                 context: Any = None, ray_address: str | None = None,
                 ray_remote_args: dict[str, Any] | None = None) -> None:
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not ember.is_initialized():
            ember.init(address=ray_address)
        if processes is None:
            processes = max(1, int(ember.cluster_resources().get("CPU", 1)))
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs or ())
        self._maxtasksperchild = maxtasksperchild
        # As in Ray: an actor needs a CPU to be placed and holds none while it runs, so a pool made
        # inside a task (joblib, nested pools) never waits for the CPU its caller holds.
        remote_args = dict(ray_remote_args or {})
        self._actor_class = ember.remote(PoolActor).options(**remote_args)
        self._actors = [self._new_actor() for _ in range(processes)]
        self._tasks_run = [0] * processes
        self._retired: list[Any] = []
        self._next = 0
        self._lock = threading.Lock()
        self._state = _State.RUN
        self._outstanding: set[AsyncResult] = set()
        self._completed: queue.Queue[AsyncResult | None] = queue.Queue()
        self._result_thread = threading.Thread(target=self._handle_results, name="ember-pool-results", daemon=True)
        self._result_thread.start()

    # ------------------------------------------------------------------ actors
    def _new_actor(self) -> Any:
        return self._actor_class.remote(self._initializer, self._initargs)

    def _run_chunk(self, func: Callable[..., Any], chunk: list[Any], star: bool) -> ember.ObjectRef:
        """Submit one chunk to the next actor (round robin), replacing it after ``maxtasksperchild``."""
        with self._lock:
            index = self._next
            self._next = (index + 1) % self._processes
            if self._maxtasksperchild is not None and self._tasks_run[index] >= self._maxtasksperchild:
                old = self._actors[index]
                self._actors[index] = self._new_actor()
                self._tasks_run[index] = 0
                # Its queued calls run first, then it exits (calls from one caller run in order).
                old.__ray_terminate__.remote()
                self._retired.append(old)
            self._tasks_run[index] += 1
            actor = self._actors[index]
        ref: ember.ObjectRef = actor.run_batch.remote(func, chunk, star)
        return ref

    # ------------------------------------------------------------------ results
    def _handle_results(self) -> None:
        # Ends at the stop mark (join/terminate) once no accepted work is left: after terminate,
        # outstanding results still complete (their calls fail with the actors' death).
        stopping = False
        while True:
            job = self._completed.get()
            if job is None:
                stopping = True
            else:
                try:
                    job._complete()
                except Exception:
                    # A callback raised: the standard library's result thread would die; keep serving.
                    logger.exception("a callback of ember.util.multiprocessing.Pool raised")
                finally:
                    with self._lock:
                        self._outstanding.discard(job)
            with self._lock:
                if stopping and not self._outstanding:
                    return

    def _submit(self, job: AsyncResult, func: Callable[..., Any], chunks: Iterable[list[Any]], star: bool) -> AsyncResult:
        with self._lock:
            self._outstanding.add(job)
        for chunk in chunks:
            job._add(self._run_chunk(func, chunk, star).future())
        job._seal()
        return job

    def _check_running(self) -> None:
        if self._state is not _State.RUN:
            raise ValueError("Pool not running")

    # ------------------------------------------------------------------ the standard library's API
    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None) -> Any:
        """``func(*args, **kwds)`` on one of the pool's actors; waits for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None,
                    callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        self._check_running()
        call = _Call(func, tuple(args), dict(kwds or {}))
        job = AsyncResult(self, True, callback, error_callback)
        return self._submit(job, call, [[()]], True)

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None) -> list[Any]:
        """``[func(x) for x in iterable]``, computed by the pool, in order."""
        return self._map_now(func, iterable, chunksize, star=False)

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None,
                  callback: Callable[[Any], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=False)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None) -> list[Any]:
        """``[func(*args) for args in iterable]``, computed by the pool, in order."""
        return self._map_now(func, iterable, chunksize, star=True)

    def _map_now(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None,
                 star: bool) -> list[Any]:
        # The blocking calls wait with one ``get`` on the chunks' refs: no futures, no result thread.
        self._check_running()
        chunks = self._chunked(iterable, chunksize, star)
        batches = ember.get([self._run_chunk(func, chunk, star) for chunk in chunks])
        return [value for batch in batches for value in _unpack(batch)]

    def _chunked(self, iterable: Iterable[Any], chunksize: int | None, star: bool) -> Iterator[list[Any]]:
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        if chunksize is None:
            chunksize = _default_chunksize(len(items), self._processes)  # type: ignore[arg-type]
        _check_chunksize(chunksize)
        if star:
            items = [tuple(args) for args in items]
        return _chunks(items, chunksize)

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None,
                      callback: Callable[[Any], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=True)

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None,
                   callback: Callable[[Any], Any] | None, error_callback: Callable[[BaseException], Any] | None,
                   star: bool) -> AsyncResult:
        self._check_running()
        chunks = self._chunked(iterable, chunksize, star)
        job = AsyncResult(self, False, callback, error_callback)
        return self._submit(job, func, chunks, star)

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """Results of ``func`` over ``iterable`` in order, as they become available."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """Results of ``func`` over ``iterable`` in the order they finish."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int, ordered: bool) -> IMapIterator:
        self._check_running()
        _check_chunksize(chunksize)
        refs = [self._run_chunk(func, chunk, False) for chunk in _chunks(iterable, chunksize)]
        return IMapIterator(refs, ordered)

    def close(self) -> None:
        """Accept no more work; the actors exit once it is done (see ``join``)."""
        if self._state is _State.RUN:
            self._state = _State.CLOSE

    def terminate(self) -> None:
        """End every actor now; outstanding work is abandoned."""
        if self._state is _State.TERMINATE:
            return
        self._state = _State.TERMINATE
        for actor in self._actors + self._retired:
            try:
                ember.kill(actor)
            except Exception:  # already gone, or the cluster is shutting down: nothing left to end
                pass
        self._retired.clear()
        self._completed.put(None)

    def join(self) -> None:
        """Wait for the outstanding work and the actors' exit; call ``close()`` or ``terminate()`` first."""
        if self._state is _State.RUN:
            raise ValueError("Pool is still running")
        if self._state is _State.CLOSE:
            with self._lock:
                jobs = list(self._outstanding)
            for job in jobs:
                job.wait()
            refs = [actor.__ray_terminate__.remote() for actor in self._actors + self._retired]
            try:
                ember.wait(refs, num_returns=len(refs))
            finally:
                self._state = _State.TERMINATE
                self._completed.put(None)
        self._result_thread.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<ember.util.multiprocessing.Pool state={self._state.value} pool_size={self._processes}>"


class _Call:
    """``func(*args, **kwds)`` as a picklable callable taking no arguments (one ``apply``)."""

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], kwds: dict[str, Any]) -> None:
        self.func, self.args, self.kwds = func, args, kwds

    def __call__(self) -> Any:
        return self.func(*self.args, **self.kwds)


def _check_chunksize(chunksize: Any) -> None:
    if not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
