"""``list_logs`` / ``get_log``: the cluster's log files, read through each node's daemon.

A file is named by node and file name, or found from an actor id (its worker's stdout),
a task id (the stdout of the worker that ran it) or a worker pid. Node daemons serve only
files directly inside their session's ``logs/`` folder (``raylet/log_files.py``).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from ember._private.config import config
from ember.protocol.raylet import LogChunk
from ember.util.state.common import DEFAULT_RPC_TIMEOUT
from ember.util.state.sources import StateSource, list_resource

#: The line prefix workers write before each task's output (``core/task_executor.MARKER``).
TASK_MARKER = ":ember_task:"
#: Bytes asked per read while streaming a file.
CHUNK_BYTES = 1 << 20


async def _node(src: StateSource, node_id: str | None, node_ip: str | None) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [n for n in await src.gcs("get_nodes", None) if n["Alive"]]
    for n in nodes:
        if (node_id and n["NodeID"].startswith(node_id)) or (node_ip and n["NodeManagerAddress"] == node_ip):
            return n
        if not node_id and not node_ip and n.get("IsHead"):
            return n
    wanted = node_id or node_ip or "the head node"
    raise ValueError(f"no live node {wanted}")


async def node_call(src: StateSource, node: dict[str, Any], method: str, payload: Any) -> Any:
    from ember.rpc import connect

    conn = await connect(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}", src.token,
                         timeout=min(src.timeout, 5.0))
    try:
        return await conn.call(method, payload, src.timeout)
    finally:
        conn.close()


def categorize(names: list[str]) -> dict[str, list[str]]:
    """Ray's ``list_logs`` shape: file names by component."""
    out: dict[str, list[str]] = {}
    for name in names:
        if name.startswith("worker-"):
            key = "worker_out" if name.endswith(".out") else "worker_err" if name.endswith(".err") else "worker"
        elif name.startswith("raylet"):
            key = "raylet"
        elif name.startswith("gcs_server"):
            key = "gcs_server"
        elif name.startswith("dashboard"):
            key = "dashboard"
        elif name.startswith("job-driver"):
            key = "driver"
        else:
            key = "internal"
        out.setdefault(key, []).append(name)
    return out


async def list_node_logs(src: StateSource, node_id: str | None, node_ip: str | None,
                         glob_filter: str | None) -> dict[str, list[str]]:
    node = await _node(src, node_id, node_ip)
    files = await node_call(src, node, "list_logs", {"glob": glob_filter})
    return categorize([name for name, _size in files])


async def resolve_file(src: StateSource, *, node_id: str | None = None, node_ip: str | None = None,
                       filename: str | None = None, actor_id: str | None = None, task_id: str | None = None,
                       pid: int | None = None, suffix: str = "out") -> tuple[dict[str, Any], str]:
    """(node, file name) of the log a ``get_log`` call means; ValueError if there is none."""
    if suffix not in ("out", "err"):
        raise ValueError(f"suffix must be 'out' or 'err', got {suffix!r}")
    if sum(x is not None for x in (filename, actor_id, task_id, pid)) != 1:
        raise ValueError("give exactly one of filename, actor_id, task_id or pid")
    if filename is not None:
        return await _node(src, node_id, node_ip), filename
    if task_id is not None:
        rows = (await list_resource(src, "tasks", [("task_id", "=", task_id)], 1))["result"]
        if not rows or not rows[0]["worker_id"]:
            raise ValueError(f"task {task_id} has not run on a worker (or is unknown)")
        return await _node(src, rows[0]["node_id"], None), f"worker-{rows[0]['worker_id'][:16]}.{suffix}"
    if actor_id is not None:
        actors = (await list_resource(src, "actors", [("actor_id", "=", actor_id)], 1))["result"]
        if not actors:
            raise ValueError(f"no actor {actor_id}")
        runs = (await list_resource(src, "tasks", [("actor_id", "=", actor_id), ("worker_id", "!=", "")], 1))["result"]
        if runs:
            return await _node(src, runs[0]["node_id"], None), f"worker-{runs[0]['worker_id'][:16]}.{suffix}"
        node_id, pid = actors[0]["node_id"], actors[0]["pid"]
        if not pid:
            raise ValueError(f"actor {actor_id} has no worker yet")
    node = await _node(src, node_id, node_ip)
    info = await node_call(src, node, "get_info", None)
    for worker in info.get("workers", ()):
        if worker["pid"] == pid and worker.get("log_files"):
            name = worker["log_files"][0]
            return node, name if suffix == "out" else name[: -len("out")] + "err"
    raise ValueError(f"no worker with pid {pid} on node {node['NodeID'][:12]}")


async def read_chunk(src: StateSource, node: dict[str, Any], name: str, offset: int, max_bytes: int = CHUNK_BYTES) -> LogChunk:
    chunk: LogChunk = await node_call(src, node, "read_log", {"name": name, "offset": offset, "max_bytes": max_bytes})
    return chunk


async def tail_start(src: StateSource, node: dict[str, Any], name: str, lines: int) -> int:
    """The offset from which a file's last ``lines`` lines start (0: the whole file)."""
    if lines < 0:
        return 0
    want, back = lines + 1, 64 * 1024
    while True:
        chunk = await read_chunk(src, node, name, -back, back)
        data: bytes = chunk["data"]
        if data.endswith(b"\n"):
            data = data[:-1]
        if data.count(b"\n") >= want - 1 and lines > 0:
            cut = len(data)
            for _ in range(lines):
                cut = data.rfind(b"\n", 0, cut)
                if cut < 0:
                    return int(chunk["offset"])
            return int(chunk["offset"]) + cut + 1
        if chunk["offset"] == 0:
            return 0 if lines > 0 else int(chunk["size"])
        back *= 4


def list_logs(address: str | None = None, node_id: str | None = None, node_ip: str | None = None,
              glob_filter: str | None = None, timeout: int = DEFAULT_RPC_TIMEOUT) -> dict[str, list[str]]:
    """The log files of one node (default: the head), by component, as in Ray."""
    from ember.util.state.api import run_query

    return run_query(address, timeout, lambda src: list_node_logs(src, node_id, node_ip, glob_filter))  # type: ignore[no-any-return]


def get_log(address: str | None = None, node_id: str | None = None, node_ip: str | None = None,
            filename: str | None = None, actor_id: str | None = None, task_id: str | None = None,
            pid: int | None = None, follow: bool = False, tail: int = -1, timeout: int = DEFAULT_RPC_TIMEOUT,
            suffix: str = "out", encoding: str | None = "utf-8", errors: str | None = "strict",
            submission_id: str | None = None, attempt_number: int = 0, _interval: float | None = None,
            filter_ansi_code: bool = False) -> Generator[str, None, None]:
    """Yield a log file's text in chunks: the last ``tail`` lines (-1: all), then, with
    ``follow``, what is appended until the caller stops iterating."""
    from ember.util.state.api import run_query

    if submission_id is not None:
        filename = f"job-driver-{submission_id}.log"
    node, name = run_query(address, timeout, lambda src: resolve_file(
        src, node_id=node_id, node_ip=node_ip, filename=filename, actor_id=actor_id, task_id=task_id,
        pid=pid, suffix=suffix))
    offset = run_query(address, timeout, lambda src: tail_start(src, node, name, tail))
    period = _interval or config().log_poll_period_s * 4
    pending = b""
    while True:
        chunk = run_query(address, timeout, lambda src, o=offset: read_chunk(src, node, name, o))
        data: bytes = chunk["data"]
        offset = chunk["offset"] + len(data)
        pending += data
        at_end = offset >= chunk["size"]
        cut = len(pending) if at_end and not follow else pending.rfind(b"\n") + 1
        text, pending = pending[:cut], pending[cut:]
        if text:
            out = _without_markers(text.decode(encoding or "utf-8", errors or "strict"))
            if out:
                yield _strip_ansi(out) if filter_ansi_code else out
        if not at_end:
            continue
        if not follow:
            return
        time.sleep(period)  # polling a growing file: no change notification crosses machines


def _without_markers(text: str) -> str:
    """Drop the lines workers write to attribute output to tasks (not the user's output)."""
    if TASK_MARKER not in text:
        return text
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(TASK_MARKER))


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


__all__ = ["get_log", "list_logs"]
