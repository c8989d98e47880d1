"""The one process-global: the core worker of this process, if any.

The public API is module-level functions (``ember.get``...), so something
must point at the runtime. Everything else receives the worker explicitly.
"""

from __future__ import annotations

from typing import Any

_core_worker: Any = None


def set_core_worker(worker: Any) -> None:
    global _core_worker
    _core_worker = worker


def core_worker_or_none() -> Any:
    return _core_worker


def core_worker() -> Any:
    """The running core worker; raises a clear error when Ember is not initialised."""
    worker = _core_worker
    if worker is None:
        from ember.exceptions import RaySystemError

        raise RaySystemError(
            "Ember is not initialized: call ember.init() first "
            "(or ember.init(address='auto') to join a running cluster)."
        )
    return worker
