"""The object a process serves RPCs with, gathered from its components.

A connection calls ``handler.rpc_<method>(conn, request)`` (``connection.py``). A
process made of components (the core worker, the node daemon) registers each one:
their ``rpc_*`` methods become this object's. A method two components both answer is
a wiring bug, refused at start-up.
"""

from __future__ import annotations

from ember.protocol.registry import Service

_HANDLER_NAMES: dict[type, tuple[str, ...]] = {}


def _handler_names(cls: type) -> tuple[str, ...]:
    names = _HANDLER_NAMES.get(cls)
    if names is None:
        names = _HANDLER_NAMES[cls] = tuple(name for name in dir(cls) if name.startswith("rpc_"))
    return names


class RpcHandlers:
    """What other processes may call here: the ``rpc_<method>`` of each registered component.

    ``protocol_service`` names the methods served (``ember.protocol``): a connection
    decodes each request to its declared type before the ``rpc_`` method runs.
    """

    def __init__(self, service: Service) -> None:
        self.protocol_service = service

    def register(self, component: object) -> None:
        for name in _handler_names(type(component)):
            if name in self.__dict__:
                raise ValueError(f"two components answer {name[4:]!r}")
            setattr(self, name, getattr(component, name))
