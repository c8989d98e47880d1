"""A node's system metrics under Ray's Prometheus names and labels.

Built at each scrape from the node daemon's state (resources, object store)
and from the operating system (``psutil``, the memory monitor's cgroup-aware
reading). The head node adds the cluster-wide counts the control service
keeps (``ray_actors``, ``ray_tasks``). Names and labels follow Ray 2.x so
that its Grafana dashboards and alerts work unchanged.
"""

from __future__ import annotations

import os
from collections import Counter as _Tally
from collections.abc import Iterable, Mapping
from typing import Any

from ember.protocol.gcs import ActorRecord
from ember.raylet.metric_families import Family, gauge

MB = 1e6


def resources(total: dict[str, float], available: dict[str, float], labels: dict[str, str]) -> Family:
    """``ray_resources{Name, State=USED|AVAILABLE}``: logical resources (``node:`` markers left out)."""
    names = ("Name", "State", *labels)
    fam = Family("ray_resources", "gauge", "Logical resource usage for each node of the cluster.", names)
    fixed = tuple(labels.values())
    for name, amount in sorted(total.items()):
        if name.startswith("node:"):
            continue
        free = max(available.get(name, 0.0), 0.0)
        fam.add((name, "AVAILABLE", *fixed), free)
        fam.add((name, "USED", *fixed), max(amount - free, 0.0))
    return fam


def object_store(stats: dict[str, int], labels: dict[str, str]) -> list[Family]:
    """``ray_object_store_memory{Location, ObjectState}`` and ``ray_spill_manager_objects(_bytes)``."""
    names = ("Location", "ObjectState", *labels)
    fixed = tuple(labels.values())
    sealed = stats["used"] - stats.get("unsealed", 0)
    memory = gauge("ray_object_store_memory", "Object store memory by location in bytes.", names, [
        (("MMAP_SHM", "SEALED", *fixed), float(sealed)),
        (("MMAP_SHM", "UNSEALED", *fixed), float(stats.get("unsealed", 0))),
        (("SPILLED", "", *fixed), float(stats["spilled_bytes"])),
    ])
    spill_names = ("State", *labels)
    spilled_bytes = gauge("ray_spill_manager_objects_bytes", "Bytes of objects by spill state.", spill_names, [
        (("Spilled", *fixed), float(stats["spilled_bytes"])),
        (("Pinned", *fixed), float(sealed)),
    ])
    spilled_objects = gauge("ray_spill_manager_objects", "Number of objects by spill state.", spill_names, [
        (("Spilled", *fixed), float(stats["spilled_objects"])),
        (("Pinned", *fixed), float(stats["objects"])),
    ])
    return [memory, spilled_bytes, spilled_objects]


class OsSampler:
    """What the operating system says about the node and its Ember processes.

    Keeps ``psutil.Process`` objects between scrapes so that CPU percentages
    cover the time since the previous scrape (the first scrape measures 0.1 s).
    Its methods block (they read ``/proc``): the node daemon calls them in a
    thread. ``psutil`` is imported at the first scrape.
    """

    def __init__(self) -> None:
        self._procs: dict[int, Any] = {}
        self._primed = False

    def node(self, labels: dict[str, str]) -> list[Family]:
        """``ray_node_cpu_utilization``, ``ray_node_cpu_count``, ``ray_node_mem_*`` (cgroup-aware)."""
        import psutil

        from ember.raylet.memory_monitor import read_memory

        cpu_percent = psutil.cpu_percent(None if self._primed else 0.1)
        self._primed = True
        names = tuple(labels)
        fixed = tuple(labels.values())
        mem = read_memory()
        host = psutil.virtual_memory()

        def one(name: str, help: str, value: float) -> Family:
            return gauge(name, help, names, [(fixed, float(value))])

        return [
            one("ray_node_cpu_utilization", "Total CPU usage on a ray node (percentage).", cpu_percent),
            one("ray_node_cpu_count", "Total CPUs available on a ray node.", psutil.cpu_count() or 1),
            one("ray_node_mem_used", "Memory usage on a ray node (bytes).", mem.used),
            one("ray_node_mem_available", "Memory available on a ray node (bytes).", max(mem.total - mem.used, 0)),
            one("ray_node_mem_total", "Total memory on a ray node (bytes).", mem.total),
            one("ray_node_mem_used_host", "Host memory usage on a ray node (bytes).", host.total - host.available),
            one("ray_node_mem_total_host", "Total host memory on a ray node (bytes).", host.total),
        ]

    def components(self, components: Iterable[tuple[str, int]], labels: dict[str, str]) -> list[Family]:
        """``ray_component_{rss,uss}_{mb,bytes}`` and ``ray_component_cpu_percentage``."""
        import psutil

        rss: _Tally[tuple[str, str]] = _Tally()
        uss: _Tally[tuple[str, str]] = _Tally()
        cpu: dict[tuple[str, str], float] = {}
        seen: set[int] = set()
        for component, pid in components:
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first reading only starts the interval
                info = proc.memory_full_info()
                # Workers are summed per component (as Ray does, without a pid); daemons keep theirs.
                key = (component, "" if component.startswith("ray::") else str(pid))
                rss[key] += info.rss
                uss[key] += getattr(info, "uss", 0)
                cpu[key] = cpu.get(key, 0.0) + proc.cpu_percent(None)
                seen.add(pid)
            except (psutil.Error, OSError):
                continue
        for pid in set(self._procs) - seen:
            del self._procs[pid]
        names = ("Component", "pid", *labels)
        fixed = tuple(labels.values())

        def fam(name: str, help: str, tally: Mapping[tuple[str, str], float], scale: float) -> Family:
            return gauge(name, help, names, [((c, p, *fixed), v / scale) for (c, p), v in sorted(tally.items())])

        return [
            fam("ray_component_rss_mb", "RSS usage of all components on the node.", rss, MB),
            fam("ray_component_uss_mb", "USS usage of all components on the node.", uss, MB),
            fam("ray_component_rss_bytes", "RSS usage of all components on the node.", rss, 1.0),
            fam("ray_component_uss_bytes", "USS usage of all components on the node.", uss, 1.0),
            fam("ray_component_cpu_percentage", "Total CPU usage of the components on a node.", cpu, 1.0),
        ]


def actors(rows: list[ActorRecord], labels: dict[str, str]) -> Family:
    """``ray_actors{Name, State, Source="gcs"}`` from the control service's actor table."""
    tally = _Tally((row.get("class_name") or "", row["state"]) for row in rows)
    names = ("Name", "State", "Source", "Component", *labels)
    fixed = tuple(labels.values())
    return gauge("ray_actors", "Current number of actors in a particular state.", names, [
        ((name, state, "gcs", "gcs_server", *fixed), float(n)) for (name, state), n in sorted(tally.items())
    ])


def tasks(rows_by_process: Iterable[list[list[Any]]], labels: dict[str, str]) -> Family:
    """``ray_tasks{Name, State, IsRetry, Source, JobId}``: the counts this node's processes reported, summed."""
    tally: _Tally[tuple[str, str, str, str, str]] = _Tally()
    for rows in rows_by_process:
        for name, state, is_retry, source, job_id, count in rows:
            tally[(str(name), str(state), str(is_retry), str(source), bytes(job_id).hex())] += int(count)
    names = ("Name", "State", "IsRetry", "Source", "JobId", "Component", *labels)
    fixed = ("core_worker", *labels.values())
    return gauge("ray_tasks", "Current number of tasks currently in a particular state.", names, [
        ((*key, *fixed), float(n)) for key, n in sorted(tally.items())
    ])


def session_name(session_dir: str) -> str:
    return os.path.basename(session_dir.rstrip("/"))
