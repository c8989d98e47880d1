"""What the control service writes to its storage, and how it reads it back.

Every table row is a msgpack map. A write happens before the RPC that
caused it is answered, so a control service restarted on the same storage
knows every acknowledged node, job, actor, placement group and KV entry.

Tables: ``meta`` (cluster id, job counter), ``nodes``, ``jobs``, ``actors``,
``pgs``, and ``kv:<namespace>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack


def pack(record: Mapping[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


def unpack(data: bytes) -> dict[str, Any]:
    record: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return record


def actor_record(entry: Any) -> dict[str, Any]:
    return {
        "spec": entry.spec,
        "state": entry.state.value,
        "address": entry.address,
        "worker_id": entry.worker_id,
        "node_id": entry.node_id,
        "lease_id": entry.lease_id,
        "pid": entry.pid,
        "incarnation": entry.incarnation,
        "num_restarts": entry.num_restarts,
        "death_cause": entry.death_cause,
        "creation_error": entry.creation_error,
        "error_type": entry.error_type,
    }


def pg_record(entry: Any) -> dict[str, Any]:
    return {
        "spec": {
            "pg_id": entry.pg_id, "name": entry.name, "namespace": entry.namespace, "bundles": entry.bundles,
            "strategy": entry.strategy, "job": entry.job, "lifetime": "detached" if entry.detached else None,
        },
        "state": entry.state.value,
        "nodes": entry.nodes,
    }
