"""Ray-compatible utilities (``ember.util``)."""

from typing import Any

from ember._private.serialization import deregister_serializer, register_serializer


def __getattr__(name: str) -> Any:
    # Lazy, so that importing ember.util stays cheap.
    if name == "ActorPool":
        from ember.util.actor_pool import ActorPool

        return ActorPool
    raise AttributeError(f"module 'ember.util' has no attribute {name!r}")


__all__ = ["ActorPool", "deregister_serializer", "register_serializer"]
