"""``ember memory``: every object reference in the cluster, by owner and node.

Asks each node daemon for the core workers on its node, then each core
worker for its reference table (``memory_table``), and prints one row per
(process, object) with Ray's reference types.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ember.exceptions import RpcError
from ember.rpc import connect


async def _collect(gcs_address: str, token: str, timeout: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    gcs = await connect(gcs_address, token, timeout=timeout)
    try:
        nodes = await gcs.call("get_nodes", None, timeout)
    finally:
        gcs.close()
    tables: list[dict[str, Any]] = []

    async def worker_table(address: list[Any]) -> None:
        try:
            conn = await connect((address[0], address[1]), token, timeout=timeout, retry=False)
        except (RpcError, OSError):
            return  # the process exited meanwhile
        try:
            tables.append(await conn.call("memory_table", None, timeout))
        except (RpcError, OSError):
            pass  # it exited or could not answer in time: its table is left out of the report
        finally:
            conn.close()

    async def node_tables(node: dict[str, Any]) -> None:
        try:
            conn = await connect((node["NodeManagerAddress"], node["NodeManagerPort"]), token, timeout=timeout, retry=False)
        except (RpcError, OSError):
            return  # the node died meanwhile
        try:
            clients = await conn.call("list_clients", None, timeout)
        finally:
            conn.close()
        await asyncio.gather(*(worker_table(a) for a in clients))

    await asyncio.gather(*(node_tables(n) for n in nodes if n["Alive"]))
    return nodes, tables


def collect(gcs_address: str, token: str, timeout: float = 5.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_collect(gcs_address, token, timeout))
    finally:
        loop.close()


def _mib(n: float) -> str:
    return f"{n / (1024 * 1024):.2f} MiB"


def format_report(nodes: list[dict[str, Any]], tables: list[dict[str, Any]]) -> str:
    lines = ["======== Object references ========"]
    by_node: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for table in tables:
        for row in table["objects"]:
            by_node.setdefault(table["node_id"], []).append((table, row))
    header = f"{'IP Address':<15} {'PID':>7} {'Type':<7} {'Size':>12} {'Reference Type':<22} {'Owned':<5} {'Object Ref':<42} Call Site"
    for node in nodes:
        if not node["Alive"]:
            continue
        rows = by_node.get(node["NodeID"], [])
        lines.append(f"--- Node {node['NodeID'][:12]} at {node['NodeManagerAddress']} ---")
        lines.append(header)
        total = 0
        for table, row in sorted(rows, key=lambda tr: -tr[1]["size"]):
            total += row["size"] if row["owned"] else 0
            lines.append(
                f"{table['ip']:<15} {table['pid']:>7} {table['mode']:<7} {row['size']:>12} "
                f"{row['reference_type']:<22} {'yes' if row['owned'] else 'no':<5} {row['object_id']:<42} {row['call_site']}"
            )
        counts: dict[str, int] = {}
        for _, row in rows:
            counts[row["reference_type"]] = counts.get(row["reference_type"], 0) + 1
        lines.append(
            f"Node total: {len(rows)} references, {_mib(total)} owned; "
            + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            + f"; object store {_mib(node.get('ObjectStoreUsed', 0))} used of {_mib(node.get('ObjectStoreCapacity', 0))}, "
            f"{_mib(node.get('ObjectStoreSpilled', 0))} spilled, "
            f"{_mib(node.get('ObjectStoreFallback', 0))} in {node.get('ObjectStoreFallbackObjects', 0)} fallback file(s) on disk"
        )
    return "\n".join(lines)
