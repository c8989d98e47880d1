"""``@ember.remote`` on a function: ``RemoteFunction`` and its ``.options``."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from ember._private import ids, runtime
from ember._private.object_ref import ObjectRef
from ember.api.options import TASK_DEFAULTS, task_resources, validate_task_options
from ember.core.generator_stream import generator_mode, start_stream
from ember.core.task_state import TaskEntry
from ember.protocol.core_worker import TaskSpec
from ember.util.scheduling_strategies import apply_placement_group, resolve_strategy


class RemoteFunction:
    """A function that runs as a task: call ``.remote(...)`` to submit it."""

    #: The function's signature, computed at the first call that checks arguments.
    _signature: inspect.Signature | None

    def __init__(self, function: Any, options: dict[str, Any]) -> None:
        self._function = function
        self._function_name = getattr(function, "__name__", repr(function))
        defaults = dict(TASK_DEFAULTS)
        if inspect.isgeneratorfunction(function):
            defaults["num_returns"] = "streaming"  # as Ray: a generator function streams its items
        self._default_options = {**defaults, **validate_task_options(dict(options))}
        self._fid: bytes | None = None
        self._fid_worker: Any = None
        self._prepared: dict[int, tuple[Any, ...]] = {}
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running "
            f"'{self._function_name}()', try '{self._function_name}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the function as a task; returns ObjectRef(s) to its result(s)."""
        return self._remote(args, kwargs, self._default_options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy call of this function, for a DAG (``ember.dag``): run it with ``.execute()``."""
        from ember.api.dag import FunctionNode

        return FunctionNode(self, args, kwargs, {})

    def options(self, **options: Any) -> _FunctionWithOptions:
        """A copy of this function with some options changed (checked now: a bad one raises here)."""
        validate_task_options(options)
        return _FunctionWithOptions(self, {**self._default_options, **options})

    def __getstate__(self) -> dict[str, Any]:
        # A remote function captured by another one (nested tasks) travels by
        # value; the export cache refers to this process's core worker (locks,
        # sockets), so it stays behind and the receiver exports again.
        state = self.__dict__.copy()
        state["_fid"] = None
        state["_fid_worker"] = None
        state["_prepared"] = {}
        return state

    def _export(self, worker: Any) -> bytes:
        if self._fid is None or self._fid_worker is not worker:
            self._fid = worker.function_manager.export(self._function, self._function_name)
            self._fid_worker = worker
        return self._fid

    def _check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise TypeError at the call site, as Ray does, when the arguments do not fit the signature."""
        try:
            sig = self._signature
        except AttributeError:
            try:
                sig = inspect.signature(self._function)
            except (TypeError, ValueError):  # no signature to check (some builtins, C callables)
                sig = None
            self._signature = sig
        if sig is not None:
            try:
                sig.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self._function_name}.remote(): {exc}") from None

    def _remote(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
        self._check_arguments(args, kwargs)
        worker = runtime.core_worker_or_none()
        if worker is None:
            from ember.api.init import init

            init()
            worker = runtime.core_worker()
        fid = self._export(worker)
        name = options.get("name") or self._function_name
        task_id = ids.new_task_id(worker.current_job_id)
        mode = generator_mode(options["num_returns"])
        num_returns = 1 if mode else options["num_returns"]
        return_ids = [ids.return_object_id(task_id, i + 1) for i in range(num_returns)]
        wire_args, kw_names, arg_ids = worker.encode_args(args, kwargs, name)
        requested = task_resources(options)
        strategy, pg_group = resolve_strategy(options, worker.captured_placement_group, [requested], f"task {name}")
        resources, strategy = apply_placement_group(requested, strategy)
        env_key, env = worker.renv.effective(options.get("runtime_env"))
        address = worker.address
        spec: TaskSpec = {
            "tid": task_id,
            "job": worker.current_job_id,
            "fid": fid,
            "name": name,
            "args": wire_args,
            "kw": kw_names,
            "nret": num_returns,
            "rids": return_ids,
            "owner": address,
            "res": requested,
        }
        if mode:
            spec["gen"] = mode
        if pg_group is not None:
            spec["pg_group"] = pg_group  # [id, capture]: get_current_placement_group() and its children's group
        counter = worker.reference_counter
        for rid in return_ids:
            counter.add_owned(rid, address)
        refs = [ObjectRef(rid, address) for rid in return_ids]
        retry_exceptions = options["retry_exceptions"]
        entry = TaskEntry(
            spec, name, return_ids, options["max_retries"],
            retry_exceptions if retry_exceptions is True or not retry_exceptions else tuple(retry_exceptions),
            arg_ids, (tuple(sorted(resources.items())), repr(strategy), env_key), resources,
        )
        entry.strategy = strategy
        entry.parent = worker.current_task_id
        if env_key:
            entry.renv = [env_key, env]
        if mode:
            stream = start_stream(worker, task_id, refs[0], mode, options.get("_generator_backpressure_num_objects") or 0)
            worker.submit_task(entry)
            return stream
        worker.submit_task(entry)
        if num_returns == 1:
            return refs[0]
        if num_returns == 0:
            return None
        return refs


class _FunctionWithOptions:
    def __init__(self, function: RemoteFunction, options: dict[str, Any]) -> None:
        self._function = function
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._function._remote(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from ember.api.dag import FunctionNode

        return FunctionNode(self, args, kwargs, {})

    def options(self, **options: Any) -> _FunctionWithOptions:
        validate_task_options(options)
        return _FunctionWithOptions(self._function, {**self._options, **options})


__all__ = ["ObjectRef", "RemoteFunction"]
