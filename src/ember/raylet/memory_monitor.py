"""Watching node memory and ending one worker before the kernel's OOM killer must.

Memory in use is read from the cgroup the node daemon runs in (v2:
``memory.current`` / ``memory.max``; v1: ``memory.usage_in_bytes`` minus
inactive file pages / ``memory.limit_in_bytes``) when it has a limit, else
from ``/proc/meminfo`` (MemTotal - MemAvailable).

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


def _cgroup_v2_dir() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    rel = line.strip()[3:]
                    path = "/sys/fs/cgroup" + rel
                    return path if os.path.exists(os.path.join(path, "memory.current")) else "/sys/fs/cgroup"
    except OSError:
        return None
    return None


def read_memory() -> MemorySnapshot:
    # cgroup v2
    base = _cgroup_v2_dir()
    if base is not None:
        limit = _read_int(os.path.join(base, "memory.max"))
        current = _read_int(os.path.join(base, "memory.current"))
        if limit is not None and current is not None and limit < (1 << 60):
            inactive = _stat_value(os.path.join(base, "memory.stat"), "inactive_file")
            return MemorySnapshot(max(0, current - inactive), limit)
    # cgroup v1
    v1 = "/sys/fs/cgroup/memory"
    limit = _read_int(os.path.join(v1, "memory.limit_in_bytes"))
    usage = _read_int(os.path.join(v1, "memory.usage_in_bytes"))
    if limit is not None and usage is not None and limit < (1 << 60):
        inactive = _stat_value(os.path.join(v1, "memory.stat"), "total_inactive_file")
        return MemorySnapshot(max(0, usage - inactive), limit)
    return _meminfo()


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
    with open("/proc/meminfo") as f:
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


def raise_oom_score(pid: int | None = None, score: int = 1000) -> None:
    """Make the kernel's OOM killer prefer this process (best effort)."""
    path = f"/proc/{pid or 'self'}/oom_score_adj"
    try:
        with open(path, "w") as f:
            f.write(str(score))
    except OSError:
        pass
