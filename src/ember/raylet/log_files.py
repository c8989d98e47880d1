"""Reading this node's log files for the state API (``list_logs``/``get_log``), safely.

Only plain file names directly inside the session's ``logs/`` folder are served: a name
with a path separator, a leading dot, or one whose real path (after links) leaves the
folder raises ``ValueError``, so no request reads anything else on the machine.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from ember.protocol.raylet import LogChunk

#: Largest chunk one read returns.
MAX_READ_BYTES = 4 * 1024 * 1024


def safe_path(logs_dir: str, name: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"not a log file name: {name!r}")
    root = os.path.realpath(logs_dir)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.dirname(path) != root:
        raise ValueError(f"not a log file name: {name!r}")
    if not os.path.isfile(path):
        raise ValueError(f"no log file {name!r} on this node")
    return path


def list_files(logs_dir: str, glob: str | None = None) -> list[list[Any]]:
    """``[[name, size], ...]`` of the folder's files, sorted by name."""
    out = []
    try:
        names = sorted(os.listdir(logs_dir))
    except OSError:
        return []
    for name in names:
        if glob and not fnmatch.fnmatch(name, glob):
            continue
        try:
            st = os.stat(os.path.join(logs_dir, name))
        except OSError:
            continue
        if not name.startswith(".") and os.path.isfile(os.path.join(logs_dir, name)):
            out.append([name, st.st_size])
    return out


def read(logs_dir: str, name: str, offset: int, max_bytes: int) -> LogChunk:
    """Bytes ``[offset, offset + max_bytes)`` of a log file (``offset < 0``: from the end) and its size."""
    path = safe_path(logs_dir, name)
    max_bytes = max(0, min(int(max_bytes), MAX_READ_BYTES))
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = max(0, size + offset) if offset < 0 else min(offset, size)
        f.seek(start)
        data = f.read(max_bytes)
    return {"data": data, "offset": start, "size": size}
