"""The lazy DAG API (Ray's ``ray.dag``): build a graph with ``.bind()``, run it with ``.execute()``.

``f.bind(x)`` records a call of a remote function instead of submitting it;
``Cls.bind(...)`` an actor creation and ``node.method.bind(...)`` (or
``handle.method.bind(...)``) a call on it. Arguments may be other nodes, an
``InputNode`` (the value given to ``execute``) or its items and attributes
(``inp[0]``, ``inp["k"]``, ``inp.x``), also inside lists, tuples and dicts.
``MultiOutputNode([...])`` gathers several results.

``node.execute(*args, **kwargs)`` submits every node it depends on once (an actor
node creates a new actor per ``execute``, as in Ray) and returns what the node
stands for: an ``ObjectRef``, an actor handle, or a list of them.
"""

from __future__ import annotations

import uuid
from typing import Any

_GETITEM = "__getitem__"
_GETATTR = "__getattr__"


class DAGNode:
    """A node of a lazy task graph."""

    def __init__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> None:
        self._bound_args = tuple(args)
        self._bound_kwargs = dict(kwargs or {})
        self._bound_options = dict(options or {})
        self._stable_uuid = uuid.uuid4().hex

    def get_args(self) -> tuple[Any, ...]:
        return self._bound_args

    def get_kwargs(self) -> dict[str, Any]:
        return self._bound_kwargs

    def get_options(self) -> dict[str, Any]:
        return self._bound_options

    def get_stable_uuid(self) -> str:
        return self._stable_uuid

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Submit this node and everything it depends on; ``args``/``kwargs`` feed the ``InputNode``."""
        return _Execution(args, kwargs).run(self)

    def _run(self, execution: _Execution) -> Any:  # pragma: no cover - every node kind overrides it
        raise NotImplementedError

    def _resolved_arguments(self, execution: _Execution) -> tuple[list[Any], dict[str, Any]]:
        args = [execution.resolve(a) for a in self._bound_args]
        kwargs = {k: execution.resolve(v) for k, v in self._bound_kwargs.items()}
        return args, kwargs

    def __repr__(self) -> str:
        return f"({type(self).__name__}, {self._stable_uuid})"


class _Execution:
    """One ``execute`` call: each node runs once, its result cached by identity."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self._done: dict[int, Any] = {}

    def run(self, node: DAGNode) -> Any:
        key = id(node)
        if key not in self._done:
            self._done[key] = node._run(self)
        return self._done[key]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, DAGNode):
            return self.run(value)
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.resolve(v) for v in value)
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        return value


class InputNode(DAGNode):
    """The input of a DAG: what ``execute`` was called with.

    Used directly it is the single positional argument; ``inp[i]`` is the i-th positional
    argument, ``inp["k"]`` / ``inp.k`` the keyword argument ``k`` (or, with no such keyword,
    the item / attribute of the single positional argument).
    """

    def __enter__(self) -> InputNode:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __getitem__(self, key: int | str) -> InputAttributeNode:
        if not isinstance(key, (int, str)):
            raise TypeError(f"InputNode indices are ints (positional) or strs (keyword), got {type(key).__name__}")
        return InputAttributeNode(self, key, _GETITEM)

    def __getattr__(self, name: str) -> InputAttributeNode:
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(self, name, _GETATTR)

    def _run(self, execution: _Execution) -> Any:
        if len(execution.args) == 1 and not execution.kwargs:
            return execution.args[0]
        raise ValueError(
            "This DAG uses its InputNode as one value, so execute() takes exactly one positional "
            f"argument; it got {len(execution.args)} positional and {len(execution.kwargs)} keyword "
            "argument(s). Use inp[i] or inp.name to take several."
        )


class InputAttributeNode(DAGNode):
    """``inp[key]`` or ``inp.key``: one part of the DAG's input."""

    def __init__(self, input_node: InputNode, key: int | str, accessor: str) -> None:
        super().__init__((input_node,))
        self._key = key
        self._accessor = accessor

    @property
    def key(self) -> int | str:
        return self._key

    def _run(self, execution: _Execution) -> Any:
        key, args, kwargs = self._key, execution.args, execution.kwargs
        if isinstance(key, int):
            if key >= len(args) or key < -len(args):
                raise ValueError(f"The DAG reads input argument {key}, but execute() got {len(args)} positional argument(s).")
            return args[key]
        if key in kwargs:
            return kwargs[key]
        if len(args) == 1:
            source = args[0]
            if self._accessor == _GETITEM:
                return source[key]
            return getattr(source, key)
        raise ValueError(f"The DAG reads input {key!r}, but execute() got no keyword argument {key!r}.")


class FunctionNode(DAGNode):
    """A call of a remote function."""

    def __init__(self, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> None:
        super().__init__(args, kwargs, options)
        self._body = function

    def _run(self, execution: _Execution) -> Any:
        args, kwargs = self._resolved_arguments(execution)
        target = self._body.options(**self._bound_options) if self._bound_options else self._body
        return target.remote(*args, **kwargs)


class ClassNode(DAGNode):
    """The creation of an actor; ``node.method.bind(...)`` calls a method of it."""

    def __init__(self, actor_class: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> None:
        super().__init__(args, kwargs, options)
        self._body = actor_class

    def __getattr__(self, name: str) -> _UnboundClassMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _UnboundClassMethod(self, name)

    def _run(self, execution: _Execution) -> Any:
        args, kwargs = self._resolved_arguments(execution)
        target = self._body.options(**self._bound_options) if self._bound_options else self._body
        return target.remote(*args, **kwargs)


class _UnboundClassMethod:
    def __init__(self, parent: ClassNode, name: str, options: dict[str, Any] | None = None) -> None:
        self._parent = parent
        self._name = name
        self._options = options or {}

    def options(self, **options: Any) -> _UnboundClassMethod:
        return _UnboundClassMethod(self._parent, self._name, {**self._options, **options})

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        return ClassMethodNode(self._parent, self._name, args, kwargs, self._options)


class ClassMethodNode(DAGNode):
    """A call of an actor method; the actor is a ``ClassNode`` of the DAG or an existing handle."""

    def __init__(self, actor: Any, method_name: str, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> None:
        super().__init__(args, kwargs, options)
        self._actor = actor
        self._method_name = method_name

    def _run(self, execution: _Execution) -> Any:
        handle = execution.resolve(self._actor)
        args, kwargs = self._resolved_arguments(execution)
        method = getattr(handle, self._method_name)
        if self._bound_options:
            method = method.options(**self._bound_options)
        return method.remote(*args, **kwargs)


class MultiOutputNode(DAGNode):
    """Several results at once: ``execute`` returns the list of them."""

    def __init__(self, outputs: list[Any] | tuple[Any, ...]) -> None:
        if not isinstance(outputs, (list, tuple)):
            raise TypeError(f"MultiOutputNode takes a list of nodes, got {type(outputs).__name__}")
        super().__init__(tuple(outputs))

    def _run(self, execution: _Execution) -> Any:
        return [execution.resolve(node) for node in self._bound_args]


__all__ = [
    "ClassMethodNode", "ClassNode", "DAGNode", "FunctionNode", "InputAttributeNode", "InputNode", "MultiOutputNode",
]
