"""What every message type is built from."""

from __future__ import annotations

from typing import Any

import msgspec

#: ``[host, port, worker_id]``: where a core worker (an owner, a caller) listens.
WorkerAddress = tuple[str, int, bytes]
#: ``[host, port]``: where a daemon listens.
HostPort = tuple[str, int]
#: An opaque map whose schema belongs to one component (a task spec, a runtime env, a
#: node's public record): the protocol checks that it is a map, its owner reads it.
Record = dict[str, Any]


class Message(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A request or reply body: a msgpack map whose keys are the field names (or their
    short wire names, ``msgspec.field(name=...)``). Unknown keys are refused, fields with
    their default value are not sent."""
