"""The remote traceback attached to an error re-raised in the caller, as the standard library does.

``multiprocessing.Pool`` and ``ProcessPoolExecutor`` re-raise a worker's exception
object itself (its type unchanged) with the worker's traceback text as
``__cause__``; the pool and executor in ``ember.util`` do the same.
"""

from __future__ import annotations


class RemoteTraceback(Exception):
    """The worker-side traceback, shown as the cause of the re-raised exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def with_remote_traceback(exc: BaseException, tb: str) -> BaseException:
    """``exc`` with ``tb`` (the worker's traceback text) as its ``__cause__``."""
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc
