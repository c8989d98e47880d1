"""Test helpers for the typed protocol (ember.protocol): valid sample values of its types (the
codec's unit tests, the fuzzer) and ``via_wire``, which calls a handler the way a connection does."""

from __future__ import annotations

import asyncio
import inspect
from functools import partial
from typing import Any

import msgspec
import msgspec.inspect as mi

from ember.protocol import methods_of


def _sample(info: mi.Type) -> Any:
    """A valid value of a type, every optional field filled (so every field is exercised)."""
    if isinstance(info, mi.StructType):
        return info.cls(**{f.name: _sample(f.type) for f in info.fields})
    if isinstance(info, mi.TypedDictType):
        return {f.name: _sample(f.type) for f in info.fields}
    if isinstance(info, mi.LiteralType):
        return info.values[0]
    if isinstance(info, mi.UnionType):
        real = [t for t in info.types if not isinstance(t, mi.NoneType)]
        return _sample(real[0]) if real else None
    simple = {mi.IntType: 7, mi.FloatType: 1.5, mi.StrType: "text", mi.BytesType: b"\x01\xff",
              mi.BoolType: True, mi.NoneType: None, mi.AnyType: {"any": [1, b"x"]}}
    for kind, value in simple.items():
        if isinstance(info, kind):
            return value
    if isinstance(info, mi.ListType):
        return [_sample(info.item_type)]
    if isinstance(info, mi.TupleType):
        return tuple(_sample(t) for t in info.item_types)
    if isinstance(info, mi.DictType):
        return {_sample(info.key_type): _sample(info.value_type)}
    raise AssertionError(f"no sample for {info}: teach _sample this type")


def sample(tp: Any) -> Any:
    """A valid value of ``tp`` (None for ``None``, a method without a payload)."""
    return None if tp is None else _sample(mi.type_info(tp))


def valid_payload(tp: Any) -> Any:
    """``sample(tp)`` as the plain values a peer sends (maps and arrays, bytes kept)."""
    return msgspec.to_builtins(sample(tp), builtin_types=(bytes,))


class _ViaWire:
    """``handler.rpc_<name>(conn, payload)`` as a connection calls it: the payload decoded to its
    declared type first (``ProtocolError`` if it does not match), a struct reply turned into
    the plain values the caller reads, and the reply checked against its declared type (a
    handler answering something else fails the test). Anything else is the handler object's own
    attribute."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self._methods = methods_of(handler.protocol_service)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("rpc_"):
            return getattr(self._handler, name)
        method = self._methods[name[4:]]
        fn = getattr(self._handler, name)

        def call(conn: Any, payload: Any = None) -> Any:
            result = fn(conn, method.decode(payload))
            if inspect.iscoroutine(result):
                return _plain_later(result, method)
            if isinstance(result, asyncio.Future):
                result.add_done_callback(partial(_check_future, method))
                return result
            return _plain(result, method)

        return call


def check_reply(method: Any, value: Any) -> None:
    """Fail unless ``value`` (plain values, as a caller reads it) is of ``method``'s declared reply type."""
    if method.reply is None or method.oneway:
        return
    try:
        msgspec.convert(value, method.reply)
    except msgspec.ValidationError as exc:
        raise AssertionError(f"{method.name} answered {value!r}, not its declared {method.reply}: {exc}") from None


def _check_future(method: Any, fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        check_reply(method, _plain(fut.result(), None))


def _plain(value: Any, method: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value, builtin_types=(bytes, bytearray, memoryview))
    if method is not None:
        check_reply(method, value)
    return value


async def _plain_later(coro: Any, method: Any) -> Any:
    return _plain(await coro, method)


def via_wire(handler: Any) -> Any:
    """The handler object as a peer reaches it (see ``_ViaWire``)."""
    return _ViaWire(handler)
