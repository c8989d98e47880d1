"""The one process-global: the core worker of this process, if any.

The public API is module-level functions (``ember.get``...), so something
must point at the runtime. Everything else receives the worker explicitly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: this low module never imports the core worker at run time
    from ember.core.worker import CoreWorker

_core_worker: CoreWorker | None = None


def set_core_worker(worker: CoreWorker | None) -> None:
    global _core_worker
    _core_worker = worker


def core_worker_or_none() -> CoreWorker | None:
    return _core_worker


def core_worker() -> CoreWorker:
    """The running core worker; raises a clear error when Ember is not initialised."""
    worker = _core_worker
    if worker is None:
        from ember.exceptions import RaySystemError

        raise RaySystemError(
            "Ember is not initialized: call ember.init() first "
            "(or ember.init(address='auto') to join a running cluster)."
        )
    return worker
