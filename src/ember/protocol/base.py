"""What every message type is built from."""

from __future__ import annotations

from typing import Any

import msgspec

#: ``[host, port, worker_id]``: where a core worker (an owner, a caller) listens.
WorkerAddress = tuple[str, int, bytes]
#: ``[host, port]``: where a daemon listens.
HostPort = tuple[str, int]
#: An opaque map whose schema belongs to one component (an actor class's ``meta``, a runtime
#: env, a task event's info, the autoscaler's status): the protocol checks that it is a map
#: with string keys, its owner reads it. Everything else is a declared struct or TypedDict.
Record = dict[str, Any]


class Message(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A request or reply body: a msgpack map whose keys are the field names (or their
    short wire names, ``msgspec.field(name=...)``). Unknown keys are refused, fields with
    their default value are not sent."""
