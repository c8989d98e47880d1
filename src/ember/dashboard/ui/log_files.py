"""The session's log files for the UI: list them by node, read a range, follow, search.

Only plain file names directly inside the session's ``logs/`` folder are served: a name
with a path separator, a leading dot or one that resolves (through a link) outside the
folder is refused (``ValueError``; the route answers 400). Reads are bounded (``max_read``), searches count every match but
return only the last ``max_matches`` lines.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any

#: Node daemon files carry the first 12 hex digits of their node id.
_NODE_FILE = re.compile(r"^(?:raylet|zygote)-([0-9a-f]{12})\.")


class LogFiles:
    def __init__(self, logs_dir: str, max_read: int, max_matches: int, remembered_workers: int = 20000) -> None:
        self.logs_dir = os.path.realpath(logs_dir)
        self.max_read = max_read
        self.max_matches = max_matches
        # worker log file -> node id, learned from node daemons while the worker lived.
        self._owner: OrderedDict[str, str] = OrderedDict()
        # (node id, worker pid) -> its stdout file, for links from actors to their output.
        self._by_pid: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._remembered = remembered_workers

    def learn_owners(self, infos: dict[str, dict[str, Any]]) -> None:
        for node_id, info in infos.items():
            for worker in info.get("workers", ()):
                for name in worker.get("log_files", ()):
                    self._owner[name] = node_id
                    self._owner.move_to_end(name)
                if worker.get("log_files"):
                    self._by_pid[(node_id, worker["pid"])] = worker["log_files"][0]
                    self._by_pid.move_to_end((node_id, worker["pid"]))
        for remembered in (self._owner, self._by_pid):
            while len(remembered) > self._remembered:
                remembered.popitem(last=False)

    def stdout_of(self, node_id: str, pid: int | None) -> str | None:
        """The stdout log file of the worker ``pid`` on ``node_id``, if a node daemon named it."""
        return self._by_pid.get((node_id, pid)) if pid else None

    def owner_of(self, name: str, node_ids: list[str], head_id: str) -> str:
        match = _NODE_FILE.match(name)
        if match:
            for node_id in node_ids:
                if node_id.startswith(match.group(1)):
                    return node_id
        return self._owner.get(name, head_id)

    def listing(self) -> list[dict[str, Any]]:
        files = []
        try:
            entries = list(os.scandir(self.logs_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.is_file() and not entry.name.startswith("."):
                st = entry.stat()
                files.append({"name": entry.name, "size": st.st_size, "mtime": st.st_mtime})
        files.sort(key=lambda f: str(f["name"]))
        return files

    def by_node(self, nodes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        node_ids = [n["NodeID"] for n in nodes]
        head_id = next((n["NodeID"] for n in nodes if n.get("IsHead")), node_ids[0] if node_ids else "")
        groups: dict[str, list[dict[str, Any]]] = {node_id: [] for node_id in node_ids}
        for f in self.listing():
            groups.setdefault(self.owner_of(f["name"], node_ids, head_id), []).append(f)
        return groups

    def path_of(self, name: str) -> str:
        if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
            raise ValueError(f"not a log file name: {name!r}")
        path = os.path.realpath(os.path.join(self.logs_dir, name))
        if os.path.dirname(path) != self.logs_dir:
            raise ValueError(f"not a log file name: {name!r}")
        if not os.path.isfile(path):
            raise FileNotFoundError(name)
        return path

    def read(self, name: str, offset: int | None, tail: int | None) -> dict[str, Any]:
        """Up to ``max_read`` bytes from ``offset`` (or the last ``tail`` bytes), whole lines only."""
        path = self.path_of(name)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset is None:
                offset = max(0, size - min(tail or self.max_read, self.max_read))
            if offset > size:  # the file was truncated or replaced: start again
                offset = 0
            f.seek(offset)
            data = f.read(min(self.max_read, size - offset))
        if offset > 0 and tail is not None and b"\n" in data:
            cut = data.index(b"\n") + 1  # a tail starts at a line's start
            offset += cut
            data = data[cut:]
        if len(data) == self.max_read and b"\n" in data:
            data = data[: data.rindex(b"\n") + 1]  # a partial last line comes with the next read
        return {"file": name, "size": size, "offset": offset, "length": len(data),
                "text": data.decode("utf-8", "replace")}

    def search(self, name: str, query: str) -> dict[str, Any]:
        """Lines containing ``query`` (case-insensitive): the total count and the last matches."""
        if not query or len(query) > 1000:
            raise ValueError("search needs 1 to 1000 characters")
        needle = query.lower()
        matches: list[list[Any]] = []
        total = 0
        with open(self.path_of(name), "rb") as f:
            for number, raw in enumerate(f, 1):
                line = raw.decode("utf-8", "replace")
                if needle in line.lower():
                    total += 1
                    matches.append([number, line.rstrip("\n")])
                    if len(matches) > self.max_matches:
                        del matches[0]
        return {"file": name, "query": query, "total": total, "matches": matches}
