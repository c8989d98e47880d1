"""The wire protocol: every message between Ember processes as a declared type.

``registry.py`` names every RPC method once (service, request type, reply type);
``gcs.py``, ``raylet.py`` and ``core_worker.py`` declare each service's messages.
The RPC layer (``ember.rpc.connection``) decodes a request into its type before the
handler runs; a payload that does not match is answered with
``ErrorCode.PROTOCOL_ERROR`` and never reaches the handler. This package sits at the
bottom of the layers with ``_private``: it imports nothing of Ember but exceptions.
"""

from __future__ import annotations

from ember.protocol.base import Message
from ember.protocol.registry import Method, Service, methods_of

__all__ = ["Message", "Method", "Service", "methods_of"]
