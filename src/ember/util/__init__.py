"""Ray-compatible utilities (``ember.util``)."""

from ember._private.serialization import deregister_serializer, register_serializer

__all__ = ["deregister_serializer", "register_serializer"]
