"""``RayExecutor``: a ``concurrent.futures.Executor`` that runs each call as an Ember task.

Code written against ``concurrent.futures`` (``submit``, ``map``, ``shutdown``, ``with``,
``as_completed``, ``wait``) runs on the cluster unchanged. ``submit`` returns a
standard ``concurrent.futures.Future``: it resolves to the task's value, or raises
the call's own exception (its type unchanged, the remote traceback as its
``__cause__``, as ``ProcessPoolExecutor`` does); ``cancel()`` on a submitted call
cancels its task.

``max_workers`` bounds the calls running at once (the rest wait here, in
submission order); without it every call is submitted at once and the cluster's
resources bound the parallelism.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import ember
from ember.exceptions import RayTaskError
from ember.util._remote_traceback import with_remote_traceback


class RayExecutor(Executor):
    """Runs ``fn(*args, **kwargs)`` as an Ember task for each ``submit``.

    Args:
        max_workers: at most this many calls run at once (default: no bound of ours).
        address: the cluster to connect to when Ember is not initialized yet.
        ray_remote_args: task options for every call (``num_cpus``, ``resources``, ...).
    """

    def __init__(self, max_workers: int | None = None, *, address: str | None = None,
                 ray_remote_args: dict[str, Any] | None = None) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        if not ember.is_initialized():
            ember.init(address=address)
        self._max_workers = max_workers
        self._remote_args = dict(ray_remote_args or {})
        self._lock = threading.Lock()
        self._shutdown = False
        self._running = 0
        self._queued: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = deque()
        self._outstanding: set[Future[Any]] = set()
        self._remotes: dict[Any, Any] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` as a task; the returned future resolves to its value."""
        future: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._outstanding.add(future)
            if self._max_workers is not None and self._running >= self._max_workers:
                self._queued.append((future, fn, args, kwargs))
                return future
            self._running += 1
            future.set_running_or_notify_cancel()
        self._start(future, fn, args, kwargs)
        return future

    def _remote(self, fn: Callable[..., Any]) -> Any:
        remote = self._remotes.get(fn)
        if remote is None:
            remote = ember.remote(fn)
            if self._remote_args:
                remote = remote.options(**self._remote_args)
            self._remotes[fn] = remote
        return remote

    def _start(self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # RUNNING and counted in _running by the caller: every way out ends with _finished(started=True).
        try:
            ref = self._remote(fn).remote(*args, **kwargs)
        except BaseException as exc:  # e.g. an unpicklable argument: the caller learns it from the future
            future.set_exception(exc)
            self._finished(future, started=True)
            return
        # A running future cannot be cancelled through concurrent.futures; cancel the task instead.
        def cancel_task() -> bool:
            return _cancel_task(ref)

        future.cancel = cancel_task  # type: ignore[method-assign]  # the Future's own cancel cannot stop a task
        ref.future().add_done_callback(lambda done: self._resolved(future, done))

    def _resolved(self, future: Future[Any], done: Future[Any]) -> None:
        # On Ember's I/O loop. The slot is free before the caller can see the outcome (a call
        # submitted right after result() returns runs at once); a queued call starts on a fresh
        # thread (submitting a task from the loop itself would wait on the loop).
        with self._lock:
            self._running -= 1
        if done.cancelled():
            future.set_exception(ember.exceptions.TaskCancelledError())
        elif done.exception() is not None:
            exc = done.exception()
            if isinstance(exc, RayTaskError) and isinstance(exc.cause, Exception):
                # As ProcessPoolExecutor: the call's own exception, the remote traceback as its cause.
                exc = with_remote_traceback(exc.cause, exc.traceback_str)
            future.set_exception(exc)
        else:
            future.set_result(done.result())
        self._finished(future)

    def _finished(self, future: Future[Any], started: bool = False) -> None:
        with self._lock:
            self._outstanding.discard(future)
            if started:
                self._running -= 1
            nxt = None
            while self._queued and (self._max_workers is None or self._running < self._max_workers):
                candidate = self._queued.popleft()
                if candidate[0].set_running_or_notify_cancel():
                    self._running += 1
                    nxt = candidate
                    break
                self._outstanding.discard(candidate[0])  # cancelled while it waited here
        if nxt is not None:
            threading.Thread(target=self._start, args=nxt, name="ember-executor-submit", daemon=True).start()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more calls; ``cancel_futures`` cancels those still waiting here; ``wait`` waits for the rest."""
        with self._lock:
            self._shutdown = True
            queued = list(self._queued) if cancel_futures else []
            if cancel_futures:
                self._queued.clear()
        for future, *_ in queued:
            future.cancel()
            self._finished(future)
        if wait:
            while True:
                with self._lock:
                    pending = list(self._outstanding)
                if not pending:
                    return
                for future in pending:
                    try:
                        future.exception()
                    except BaseException:  # cancelled: nothing to wait for
                        pass


def _cancel_task(ref: Any) -> bool:
    try:
        ember.cancel(ref)
    except Exception:  # the task already finished: too late to cancel, as concurrent.futures says
        return False
    return True


#: Ember's own name for the same executor.
EmberExecutor = RayExecutor
