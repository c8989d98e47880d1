"""Watching node memory and ending one worker before the kernel's OOM killer must.

Memory in use is read from the cgroup the node daemon runs in (v2:
``memory.current`` / ``memory.max`` of the tightest limit from its own cgroup
up to the root, on a unified or hybrid mount; v1: its own memory cgroup,
``memory.usage_in_bytes`` minus inactive file pages / the smaller of
``memory.limit_in_bytes`` and the hierarchical limit) when there is a limit,
else from ``/proc/meminfo`` (MemTotal - MemAvailable).

``choose_victim`` is pure: among leased workers it prefers those whose work
can be retried, and among those the newest lease. Daemons are never chosen
(they are not workers), and workers run with a raised ``oom_score_adj`` so
that the kernel, if it ever acts, picks them first too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class MemorySnapshot:
    used: int
    total: int

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            raw = f.read().strip()
    except OSError:
        return None
    if raw == "max":
        return None
    try:
        return int(raw)
    except ValueError:
        return None


#: Where the readers look (tests point them at fake trees).
PROC_SELF_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
PROC_MEMINFO = "/proc/meminfo"
_UNLIMITED = 1 << 60


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per controller ("" for the v2 hierarchy)."""
    out: dict[str, str] = {}
    try:
        with open(PROC_SELF_CGROUP) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for name in controllers.split(",") if controllers else [""]:
                    out[name] = path
    except (OSError, ValueError):
        pass
    return out


def _ancestors(root: str, rel: str) -> list[str]:
    """``root/rel`` and each of its parents up to ``root`` (those that exist)."""
    parts = [p for p in rel.split("/") if p]
    dirs = [os.path.join(root, *parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if os.path.isdir(d)]


def _cgroup_v2() -> MemorySnapshot | None:
    """The tightest memory.max on the way from our cgroup to the root (unified or hybrid mount)."""
    rel = _own_cgroups().get("")
    if rel is None:
        return None
    best: MemorySnapshot | None = None
    for root in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
        for path in _ancestors(root, rel):
            limit = _read_int(os.path.join(path, "memory.max"))
            current = _read_int(os.path.join(path, "memory.current"))
            if limit is None or current is None or limit >= _UNLIMITED:
                continue
            if best is None or limit - current < best.total - best.used:
                inactive = _stat_value(os.path.join(path, "memory.stat"), "inactive_file")
                best = MemorySnapshot(max(0, current - inactive), limit)
        if best is not None:
            return best
    return None


def _cgroup_v1() -> MemorySnapshot | None:
    """Our own memory cgroup when it is visible, else the one mounted (a container's)."""
    rel = _own_cgroups().get("memory", "/")
    mount = os.path.join(CGROUP_ROOT, "memory")
    for path in dict.fromkeys([os.path.join(mount, *[p for p in rel.split("/") if p]), mount]):
        limit = _read_int(os.path.join(path, "memory.limit_in_bytes"))
        usage = _read_int(os.path.join(path, "memory.usage_in_bytes"))
        if limit is None or usage is None:
            continue
        stat = os.path.join(path, "memory.stat")
        hierarchical = _stat_value(stat, "hierarchical_memory_limit")  # the tightest limit above us too
        if hierarchical:
            limit = min(limit, hierarchical)
        if limit < _UNLIMITED:
            return MemorySnapshot(max(0, usage - _stat_value(stat, "total_inactive_file")), limit)
    return None


def read_memory() -> MemorySnapshot:
    return _cgroup_v2() or _cgroup_v1() or _meminfo()


def _stat_value(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _meminfo() -> MemorySnapshot:
    values: dict[str, int] = {}
    with open(PROC_MEMINFO) as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[name] = int(parts[0]) * 1024
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return MemorySnapshot(total - available, total)


@dataclass
class Candidate:
    worker_id: bytes
    retriable: bool
    granted_at: float


def choose_victim(candidates: list[Candidate]) -> Candidate | None:
    """Retriable work before non-retriable, newest lease first."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c.retriable, c.granted_at))

