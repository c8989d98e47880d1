"""Ray's ``ray.worker`` / ``ray._private.worker`` names that libraries still read.

``global_worker`` stands for this process's runtime: its ``mode`` is ``SCRIPT_MODE``
in a driver, ``WORKER_MODE`` in a worker (``None`` before ``init``); other
attributes (``worker_id``, ``node_id``, ``current_job_id``, ``namespace``...) are
the core worker's.
"""

from __future__ import annotations

from typing import Any

from ember._private import runtime

SCRIPT_MODE = 0
WORKER_MODE = 1
LOCAL_MODE = 2


class _GlobalWorker:
    """A view of this process's core worker under Ray's ``global_worker`` name."""

    @property
    def connected(self) -> bool:
        return runtime.core_worker_or_none() is not None

    @property
    def mode(self) -> int | None:
        worker = runtime.core_worker_or_none()
        if worker is None:
            return None
        return WORKER_MODE if getattr(worker, "executor", None) is not None else SCRIPT_MODE

    @property
    def core_worker(self) -> Any:
        return runtime.core_worker()

    def check_connected(self) -> None:
        runtime.core_worker()  # raises a clear error when not initialised

    def __getattr__(self, name: str) -> Any:
        return getattr(runtime.core_worker(), name)

    def __repr__(self) -> str:
        return f"<ember global_worker mode={self.mode}>"


global_worker = _GlobalWorker()


def get_resource_ids() -> dict[str, list[tuple[int, float]]]:
    """The resources reserved for the current task or actor, as Ray gives them:
    ``{name: [(id, amount), ...]}`` (GPUs by their ids, other resources as id 0)."""
    from ember.runtime_context import get_runtime_context

    assigned = get_runtime_context().get_assigned_resources()
    worker = runtime.core_worker()
    out: dict[str, list[tuple[int, float]]] = {}
    for name, amount in assigned.items():
        if name == "GPU" and worker.gpu_ids:
            share = amount / len(worker.gpu_ids) if amount < len(worker.gpu_ids) else 1.0
            out[name] = [(int(i), share) for i in worker.gpu_ids]
        else:
            out[name] = [(0, amount)]
    return out


def get_gpu_ids() -> list[int]:
    worker = runtime.core_worker_or_none()
    return list(worker.gpu_ids) if worker is not None else []


__all__ = ["LOCAL_MODE", "SCRIPT_MODE", "WORKER_MODE", "get_gpu_ids", "get_resource_ids", "global_worker"]
