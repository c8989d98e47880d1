"""Ember: a distributed computing runtime that runs Ray programs unchanged.

    import ember as ray

    @ray.remote
    def square(x):
        return x * x

    print(ray.get([square.remote(i) for i in range(4)]))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

from ember._private.version import __version__ as __version__

if TYPE_CHECKING:
    from ember import actor, exceptions, runtime_env
    from ember._private.ids import JobID, NodeID, TaskID, WorkerID
    from ember._private.object_ref import ObjectRef
    from ember.api.actor import ActorClass, get_actor, kill, method
    from ember.api.cluster_info import available_resources, cluster_resources, nodes
    from ember.api.init import init, is_initialized, shutdown
    from ember.api.objects import cancel, get, put, wait
    from ember.api.remote_function import RemoteFunction
    from ember.core.generator_stream import DynamicObjectRefGenerator, ObjectRefGenerator
    from ember.runtime_context import get_runtime_context

#: The public names and the module each comes from, imported on first use (PEP 562): the node
#: daemon, the control service and the HTTP server import ``ember.<their package>``, which runs
#: this file, and need none of the driver's API (~60 ms and ~2 MiB each at start-up).
_LAZY: dict[str, str] = {
    "JobID": "ember._private.ids", "NodeID": "ember._private.ids", "TaskID": "ember._private.ids",
    "WorkerID": "ember._private.ids",
    "ObjectRef": "ember._private.object_ref",
    "ActorClass": "ember.api.actor", "get_actor": "ember.api.actor", "kill": "ember.api.actor",
    "method": "ember.api.actor",
    "available_resources": "ember.api.cluster_info", "cluster_resources": "ember.api.cluster_info",
    "nodes": "ember.api.cluster_info",
    "init": "ember.api.init", "is_initialized": "ember.api.init", "shutdown": "ember.api.init",
    "cancel": "ember.api.objects", "get": "ember.api.objects", "put": "ember.api.objects",
    "wait": "ember.api.objects",
    "RemoteFunction": "ember.api.remote_function",
    "DynamicObjectRefGenerator": "ember.core.generator_stream",
    "ObjectRefGenerator": "ember.core.generator_stream",
    "get_runtime_context": "ember.runtime_context",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("__"):
        try:  # a submodule used as an attribute (``ember.actor``, ``ember.util``, ...)
            value = importlib.import_module(f"ember.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ember.{name}":
                raise
            raise AttributeError(f"module 'ember' has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module 'ember' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """Write the cluster's task executions to ``filename`` as a Chrome trace (or return the events)."""
    from ember.util.state.timeline import timeline as write_timeline

    return write_timeline(filename)


def get_gpu_ids() -> list[int]:
    """The GPU ids assigned to the current task or actor (empty in a driver or without GPUs)."""
    from ember._private import runtime

    worker = runtime.core_worker_or_none()
    return list(worker.gpu_ids) if worker is not None else []


@overload
def remote(target: Any, /) -> Any: ...


@overload
def remote(**options: Any) -> Callable[[Any], Any]: ...


def remote(*args: Any, **kwargs: Any) -> Any:
    """Turn a function into a task (``@ember.remote`` or ``@ember.remote(num_cpus=2, ...)``)."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError(
            "The @ember.remote decorator must be applied either with no arguments and no "
            "parentheses, for example '@ember.remote', or with keyword arguments only, "
            "for example '@ember.remote(num_returns=2, num_cpus=1)'."
        )
    return lambda target: _make_remote(target, kwargs)


def _make_remote(target: Any, options: dict[str, Any]) -> Any:
    from ember.api.actor import ActorClass
    from ember.api.remote_function import RemoteFunction

    if isinstance(target, type):
        from ember.api.options import validate_actor_options

        return ActorClass(target, validate_actor_options(options))
    if not callable(target):
        raise TypeError(f"@remote expects a function or a class, got {type(target).__name__}.")
    import inspect

    if inspect.iscoroutinefunction(target):
        raise ValueError(
            "'async def' should not be used for remote tasks. You can wrap the async function "
            f"with `asyncio.run({getattr(target, '__name__', 'f')}())`, or make it a method of an "
            "async actor."
        )
    return RemoteFunction(target, options)


__all__ = [
    "DynamicObjectRefGenerator", "JobID", "NodeID", "ObjectRef", "ObjectRefGenerator", "RemoteFunction", "TaskID",
    "WorkerID",
    "ActorClass", "actor", "available_resources", "cancel", "get_actor", "get_gpu_ids", "kill", "method", "cluster_resources", "exceptions", "get",
    "get_runtime_context", "init", "is_initialized", "nodes", "put", "remote", "runtime_env",
    "shutdown", "timeline", "wait",
]
