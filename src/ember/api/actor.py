"""``@ember.remote`` on a class: ``ActorClass``, ``ActorHandle``, ``ActorMethod``."""

from __future__ import annotations

import inspect
from typing import Any

from ember._private import ids, runtime
from ember._private.object_ref import ObjectRef, _serialization_context
from ember.api.options import (
    ACTOR_DEFAULTS,
    actor_resources,
    check_num_returns,
    validate_actor_options,
)
from ember.util.scheduling_strategies import apply_placement_group, resolve_strategy

_METHOD_OPTIONS = "__ember_method_options__"


def method(*args: Any, **kwargs: Any) -> Any:
    """Annotate an actor method: ``@ember.method(num_returns=2, concurrency_group="io")``."""
    valid = {"num_returns", "concurrency_group", "max_task_retries", "retry_exceptions", "enable_task_events",
             "_generator_backpressure_num_objects"}
    if args or not kwargs or set(kwargs) - valid:
        raise ValueError(f"@method() takes keyword arguments only, from: {', '.join(sorted(valid))}")

    def annotate(fn: Any) -> Any:
        setattr(fn, _METHOD_OPTIONS, kwargs)
        return fn

    return annotate


def _worker() -> Any:
    worker = runtime.core_worker_or_none()
    if worker is None:
        from ember.api.init import init

        init()
        worker = runtime.core_worker()
    return worker


def _class_meta(cls: type) -> dict[str, Any]:
    methods: dict[str, dict[str, Any]] = {}
    # An ``async def __init__`` makes the actor async: its constructor runs on the actor's event loop.
    is_async = inspect.iscoroutinefunction(getattr(cls, "__init__", None))
    for name, member in inspect.getmembers(cls):
        if not callable(member) or (name.startswith("__") and name != "__call__"):
            continue
        opts = getattr(member, _METHOD_OPTIONS, {})
        is_generator = inspect.isgeneratorfunction(member) or inspect.isasyncgenfunction(member)
        methods[name] = {
            "num_returns": opts.get("num_returns", "streaming" if is_generator else 1),
            "cg": opts.get("concurrency_group"),
            "bp": opts.get("_generator_backpressure_num_objects") or 0,
        }
        if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
            is_async = True
    return {"class_name": cls.__name__, "methods": methods, "is_async": is_async}


class ActorClass:
    """A class whose instances live in their own worker process."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._default_options = {**ACTOR_DEFAULTS, **validate_actor_options(dict(options))}
        self._meta = _class_meta(cls)
        self._fid: bytes | None = None
        self._fid_worker: Any = None
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
            f"use '{self.__name__}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Create an actor; returns its handle at once (``__init__`` runs in the background)."""
        return self._create(args, kwargs, self._default_options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy creation of this actor, for a DAG (``ember.dag``)."""
        from ember.api.dag import ClassNode

        return ClassNode(self, args, kwargs, {})

    def options(self, **options: Any) -> _ActorClassWithOptions:
        validate_actor_options(options)
        return _ActorClassWithOptions(self, {**self._default_options, **options})

    def __getstate__(self) -> dict[str, Any]:
        # An actor class captured by a task or another actor travels by value; the
        # export cache refers to this process's core worker (locks, sockets), so it
        # stays behind and the receiver exports again.
        state = self.__dict__.copy()
        state["_fid"] = None
        state["_fid_worker"] = None
        return state

    def _create(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> ActorHandle:
        validate_actor_options({k: v for k, v in options.items() if k in ("name", "get_if_exists")})
        worker = _worker()
        if self._fid is None or self._fid_worker is not worker:
            self._fid = worker.function_manager.export(self._cls, self.__name__)
            self._fid_worker = worker
        actor_id = ids.random_unique_id()
        wire_args, kw_names, arg_ids = worker.encode_args(args, kwargs, f"{self.__name__}.__init__")
        place, hold = actor_resources(options)
        requested = dict(hold)
        strategy, pg_group = resolve_strategy(options, worker.captured_placement_group, [place, hold], f"actor {self.__name__}")
        pg_id = strategy["pg_id"] if isinstance(strategy, dict) and strategy.get("type") == "placement_group" else None
        place, _ = apply_placement_group(place, strategy)
        hold, strategy = apply_placement_group(hold, strategy)
        meta = dict(self._meta)
        meta["max_task_retries"] = options["max_task_retries"]
        groups = options.get("concurrency_groups") or {}
        method_groups = {name: m["cg"] for name, m in meta["methods"].items() if m["cg"]}
        for name, group in method_groups.items():
            if group not in groups:
                raise ValueError(f"Method {name} uses concurrency group {group!r}, which concurrency_groups= does not define.")
        namespace = options.get("namespace") or worker.namespace
        env_key, env = worker.renv.effective(options.get("runtime_env"))
        spec = {
            "actor_id": actor_id,
            "job": worker.current_job_id,
            "fid": self._fid,
            "class_name": self.__name__,
            "args": wire_args,
            "kw": kw_names,
            "owner": worker.address,
            "name": options.get("name"),
            "namespace": namespace,
            "detached": (options.get("lifetime") or worker.default_actor_lifetime) == "detached",
            "get_if_exists": bool(options.get("get_if_exists")),
            "max_restarts": options["max_restarts"],
            "max_task_retries": options["max_task_retries"],
            "max_concurrency": options.get("max_concurrency"),
            "concurrency_groups": groups,
            "method_groups": method_groups,
            "is_async": meta["is_async"],
            "place": place,
            "hold": hold,
            "res": requested,
            "meta": meta,
            "node_id": worker.node_id,
            "strategy": strategy,
            "pg": pg_id,
        }
        if pg_group is not None:
            spec["pg_group"] = pg_group  # [id, capture]: get_current_placement_group() and its children's group
        if env_key:
            spec["renv"] = [env_key, env]
        from ember.exceptions import ErrorCode, RemoteError

        try:
            reply = worker.gcs_call("register_actor", spec)
        except RemoteError as exc:
            if exc.code is ErrorCode.BAD_REQUEST:  # e.g. the name is taken in this namespace
                raise exc.to_exception() from None
            raise
        if reply.get("existing"):
            return ActorHandle(reply["actor_id"], reply.get("meta") or meta)
        # As in Ray, a named actor is destroyed like an anonymous one once every handle copy
        # that counts is gone (handles looked up by name do not count); detached ones are not.
        auto_destroy = not spec["detached"]
        worker.register_owned_actor(actor_id, auto_destroy, arg_ids)
        return ActorHandle(actor_id, meta, owner=worker.address)


class _ActorClassWithOptions:
    def __init__(self, actor_class: ActorClass, options: dict[str, Any]) -> None:
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._actor_class._create(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from ember.api.dag import ClassNode

        return ClassNode(self, args, kwargs, {})


class ActorHandle:
    """A reference to an actor; call its methods with ``handle.method.remote(...)``."""

    def __init__(self, actor_id: bytes, meta: dict[str, Any], owner: list[Any] | None = None) -> None:
        self._actor_id = actor_id
        self._id = actor_id  # lets the serialization context treat handles like refs
        self._meta = meta
        self._counted = False
        worker = runtime.core_worker_or_none()
        #: The process that created the actor, [host, port, worker id]: a copy of this handle in
        #: another process registers there as a borrower, like a borrowed ObjectRef, so the actor
        #: lives while any copy does. None for handles looked up by name: as in Ray, they do not
        #: keep the actor alive.
        self._owner = owner
        if worker is not None and owner is not None:
            worker.reference_counter.add_local_ref(actor_id, owner)
            self._counted = True

    def __del__(self) -> None:
        if self._counted:
            worker = runtime.core_worker_or_none()
            if worker is not None:
                worker.reference_counter.remove_local_ref_deferred(self._actor_id)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_") and name not in ("__ray_ready__", "__ray_terminate__", "__ember_put__", "__call__"):
            if name not in self.__dict__.get("_meta", {}).get("methods", {}):
                raise AttributeError(name)
        methods = self._meta["methods"]
        if name in ("__ray_ready__", "__ray_terminate__", "__ember_put__"):
            return ActorMethod(self, name, 1, None)
        if name not in methods:
            raise AttributeError(f"'{self._meta['class_name']}' actor has no method {name!r}")
        return ActorMethod(self, name, methods[name]["num_returns"], methods[name]["cg"])

    def __reduce__(self) -> Any:
        refs = getattr(_serialization_context, "refs", None)
        if refs is not None:
            refs.append(self)
        return (ActorHandle, (self._actor_id, self._meta, self._owner))

    def __repr__(self) -> str:
        return f"Actor({self._meta['class_name']}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    @property
    def _ray_actor_id(self) -> Any:
        return ids.ActorID(self._actor_id)


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: int, group: str | None) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._group = group

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of '{self._name}()', "
            f"use '{self._name}.remote()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._submit(args, kwargs, self._num_returns, self._group)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        """A lazy call of this method, for a DAG (``ember.dag``)."""
        from ember.api.dag import ClassMethodNode

        return ClassMethodNode(self._handle, self._name, args, kwargs, {})

    def options(self, **options: Any) -> _MethodWithOptions:
        valid = {"num_returns", "concurrency_group", "name", "enable_task_events", "_generator_backpressure_num_objects"}
        bad = set(options) - valid
        if bad:
            raise ValueError(f"Invalid option(s) {sorted(bad)} for an actor method; valid: {sorted(valid)}")
        if "num_returns" in options:
            check_num_returns(options["num_returns"])
        return _MethodWithOptions(self, options)

    def _submit(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], num_returns: int | str, group: str | None,
        name: str | None = None, backpressure: int | None = None,
    ) -> Any:
        worker = _worker()
        handle = self._handle
        meta = handle._meta
        if backpressure is None:
            backpressure = meta["methods"].get(self._name, {}).get("bp", 0)
        refs = worker.submit_actor_call(
            handle._actor_id, self._name, args, kwargs, num_returns, group,
            name or f"{meta['class_name']}.{self._name}", meta.get("max_task_retries", 0), backpressure or 0,
        )
        if num_returns in ("streaming", "dynamic"):
            return refs[0]
        if num_returns == 1:
            return refs[0]
        if num_returns == 0:
            return None
        return refs


class _MethodWithOptions:
    def __init__(self, method: ActorMethod, options: dict[str, Any]) -> None:
        self._method = method
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        m = self._method
        return m._submit(
            args, kwargs, self._options.get("num_returns", m._num_returns),
            self._options.get("concurrency_group", m._group), self._options.get("name"),
            self._options.get("_generator_backpressure_num_objects"),
        )

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        from ember.api.dag import ClassMethodNode

        return ClassMethodNode(self._method._handle, self._method._name, args, kwargs, self._options)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor called ``name`` in ``namespace`` (default: this job's)."""
    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs a non-empty actor name")
    worker = _worker()
    ns = namespace if namespace is not None else worker.namespace
    info = worker.gcs_call("get_named_actor", {"name": name, "namespace": ns})
    if info is None:
        raise ValueError(
            f"Failed to look up actor with name {name!r} in namespace {ns!r}. It was never created, "
            "it is dead, or it lives in another namespace (pass namespace=)."
        )
    return ActorHandle(info["actor_id"], info["meta"])


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """End an actor now; with ``no_restart=False`` it is restarted if ``max_restarts`` allows."""
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"ember.kill() expects an actor handle, got {type(actor).__name__}.")
    _worker().gcs_call("kill_actor", {"actor_id": actor._actor_id, "no_restart": no_restart})


def exit_actor() -> None:
    """End the current actor once this call returns; it is not restarted."""
    worker = runtime.core_worker_or_none()
    executor = getattr(worker, "executor", None)
    if executor is None or executor.actor is None:
        raise TypeError("exit_actor() can only be called inside an actor.")
    from ember.core.task_executor import ActorExit

    raise ActorExit()


__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "ObjectRef", "exit_actor", "get_actor", "kill", "method"]
