"""Every RPC method, named once: its service, request type and reply type.

A process serves one *service* (the control service, a node daemon, a core worker).
Its handler object says which with a ``protocol_service`` class attribute; the RPC
layer finds a method here by (service, name), decodes the payload into the declared
request type and only then calls ``handler.rpc_<name>(conn, request)``. A method that
is not registered for the service does not exist, whatever the handler defines.

Adding a method: declare its request (and reply) type in the service's module
(``gcs.py``, ``raylet.py``, ``core_worker.py``), add one ``Method`` row to that
module's ``METHODS``, write ``rpc_<name>`` on the service. ``tests/test_unit_protocol.py``
fails until both sides exist.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ember.exceptions import ProtocolError


class Service(enum.Enum):
    """Who serves a method (the process kind that has the ``rpc_<name>`` handler)."""

    GCS = "gcs"  # the control service (ember/gcs)
    RAYLET = "raylet"  # a node daemon (ember/raylet)
    CORE_WORKER = "core_worker"  # a driver or a worker (ember/core)


_NIL = b"\xc0"  # msgpack's nil: the payload of a method that takes none
_plain = msgspec.msgpack.Decoder().decode


@dataclass(frozen=True)
class Method:
    """One RPC method of one service.

    ``request`` is the payload's type (a ``Message`` struct, a ``TypedDict`` for the task
    specs, or ``None`` for no payload); ``reply`` what a call answers (``None`` for one-way
    notifications, ``oneway=True``).
    """

    name: str
    request: Any
    reply: Any = None
    oneway: bool = False
    service: Service | None = field(default=None, compare=False)
    _decoder: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.request is not None:
            object.__setattr__(self, "_decoder", msgspec.msgpack.Decoder(self.request).decode)

    def decode_raw(self, raw: bytes | msgspec.Raw) -> Any:
        """A payload still in msgpack form (as the connection receives it) decoded straight into
        the declared request type; ``ProtocolError`` naming the field if it is not one."""
        decoder = self._decoder
        if decoder is None:
            if bytes(raw) == _NIL:
                return None
            try:
                got = type(_plain(raw)).__name__
            except (msgspec.DecodeError, RecursionError):
                got = "an undecodable value"
            raise ProtocolError(f"{self.name} takes no payload, got {got}")
        try:
            return decoder(raw)
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"bad {self.name} request: {exc}") from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ProtocolError(f"bad {self.name} request: {type(exc).__name__}: {exc}") from None

    def decode(self, payload: Any) -> Any:
        """A payload of plain values (maps, arrays) as the declared request type (``ProtocolError``
        if it is not one): what ``decode_raw`` gives for the same message on the wire."""
        request = self.request
        if request is None:
            if payload is None:
                return None
            raise ProtocolError(f"{self.name} takes no payload, got {type(payload).__name__}")
        try:
            return msgspec.convert(payload, request)
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"bad {self.name} request: {exc}") from None


_REGISTRY: dict[Service, dict[str, Method]] = {service: {} for service in Service}


def register(service: Service, methods: Iterable[Method]) -> None:
    """Add a service's methods (each module does it once, at import)."""
    table = _REGISTRY[service]
    for method in methods:
        if method.name in table:
            raise ValueError(f"{service.value}.{method.name} is registered twice")
        if method.name.startswith("_"):
            raise ValueError(f"method names must not start with '_': {method.name!r}")
        table[method.name] = Method(method.name, method.request, method.reply, method.oneway, service)


def methods_of(service: Service) -> dict[str, Method]:
    """Every method ``service`` serves, by name."""
    _load()
    return _REGISTRY[service]


_loaded = False


def _load() -> None:
    """Import the service modules (each registers its methods)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from ember.protocol import core_worker, gcs, raylet  # noqa: F401
