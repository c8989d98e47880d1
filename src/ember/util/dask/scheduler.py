"""A Dask scheduler (``get(dsk, keys)``) whose tasks run on the cluster.

Built only on Dask's public scheduler API: ``dask.local.get_async`` walks the
graph in Dask's order and hands ready tasks, in batches, to a
``concurrent.futures``-style ``submit``; ours is ``RayExecutor.submit``, so each
batch is one Ember task. Dask's own code runs the tasks inside it, so every
graph Dask's local schedulers accept (arrays, DataFrames, bags, delayed, the
new task spec) runs unchanged, with Dask's results and Dask's exceptions
(re-raised with their original type). Values travel between the tasks through
this process, as with Dask's thread and process schedulers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

try:
    import dask
    from dask.local import get_async
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("ember.util.dask needs Dask: pip install 'ember[dask]' (or pip install 'dask[dataframe]')") from exc

import ember
from ember.util.concurrent.futures import RayExecutor


def _cluster_cpus() -> int:
    if not ember.is_initialized():
        ember.init()
    return max(1, int(ember.cluster_resources().get("CPU", 1)))


def ray_dask_get(dsk: Mapping[Any, Any], keys: Sequence[Any], *, num_workers: int | None = None,
                 ray_remote_args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Compute ``keys`` of the Dask graph ``dsk`` with Ember tasks.

    Args:
        dsk: the graph, as Dask hands it to a scheduler.
        keys: the keys (nested lists allowed) to compute.
        num_workers: tasks in flight at once (default: the cluster's CPUs).
        ray_remote_args: task options of every task (``num_cpus``, ``resources``, ...).
        **kwargs: passed to ``dask.local.get_async`` (``callbacks``, ``chunksize``, ...).
    """
    workers = num_workers or _cluster_cpus()
    executor = RayExecutor(max_workers=workers, ray_remote_args=ray_remote_args)
    try:
        return get_async(executor.submit, workers, dsk, keys, **kwargs)  # type: ignore[no-untyped-call]  # dask has no annotations here
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def ray_dask_get_sync(dsk: Mapping[Any, Any], keys: Sequence[Any], **kwargs: Any) -> Any:
    """``ray_dask_get`` one task at a time (for debugging; Ray's name)."""
    kwargs["num_workers"] = 1
    return ray_dask_get(dsk, keys, **kwargs)


def enable_dask_on_ray(shuffle: str | None = "tasks", use_shuffle_optimization: bool = True) -> Any:
    """Make ``ray_dask_get`` Dask's default scheduler; returns the config (usable as a ``with`` block).

    ``shuffle="tasks"`` (as in Ray) makes DataFrame shuffles task-based, which any
    scheduler can run. ``use_shuffle_optimization`` is accepted for compatibility.
    """
    settings: dict[str, Any] = {"scheduler": ray_dask_get}
    if shuffle is not None:
        settings["dataframe.shuffle.method"] = shuffle
    return dask.config.set(settings)


def disable_dask_on_ray() -> Any:
    """Give Dask its own default scheduler back."""
    return dask.config.set({"scheduler": None, "dataframe.shuffle.method": None})
