"""Helpers for the memory-management tests (ownership, spilling, lineage, the refcount model).

* ``pattern(seed, n)`` / ``digest(array)``: values whose contents say which value they are.
* ``store_stats()``, ``object_files(store_dir)``, ``spill_files(session_or_dir)``: what the
  local node's store holds, by the daemon's accounting and by the files themselves
  (``free-*`` files are freed objects' files the store keeps for reuse: not objects).
* ``ClusterFactory``: ``ember.cluster_utils.Cluster`` with quick failure detection; every
  process it starts is ended by ``shutdown`` (by pid, through the Cluster).
* ``Gate``: a task waits until the test opens it (a file), with a deadline.
"""

from __future__ import annotations

import glob
import os
import time
import zlib
from typing import Any

import numpy as np

import ember
from ember._private import runtime
from ember._private.config import reset_config
from ember._private.test_utils import wait_for_condition
from ember.cluster_utils import Cluster

MiB = 1024 * 1024
QUICK_DETECTION = {
    "EMBER_node_death_timeout_s": "2",
    "EMBER_resource_report_period_s": "0.1",
    "EMBER_connect_timeout_s": "2",
}


# ============================================================================ values
def pattern(seed: int, n: int) -> np.ndarray:
    """``n`` uint32 values that only value ``seed`` has."""
    return np.arange(n, dtype=np.uint32) + np.uint32((seed * 7919) & 0xFFFFFFFF)  # wraps around


def digest(array: Any) -> tuple[int, int]:
    """(length, crc32) of an array's bytes."""
    data = np.ascontiguousarray(array)
    return int(data.size), zlib.crc32(memoryview(data).cast("B"))


def expected_digest(seed: int, n: int) -> tuple[int, int]:
    return digest(pattern(seed, n))


# ============================================================================ the store
def store_stats() -> dict[str, int]:
    return runtime.core_worker().raylet_call("store_stats", None)


def object_files(store_dir: str) -> set[str]:
    """Names (object ids in hex) of the objects in a store folder."""
    try:
        names = os.listdir(store_dir)
    except FileNotFoundError:
        return set()
    return {n for n in names if not n.startswith("free-") and "." not in n}


def spill_files(root: str) -> set[str]:
    """Names of the spill files below ``root`` (a session folder or a spill location)."""
    out = set()
    for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        if os.path.isfile(path) and len(os.path.basename(path)) == 40:
            out.add(os.path.basename(path))
    return out


def wait_store_empty(timeout: float = 20) -> dict[str, int]:
    """Wait until the local store holds nothing, in memory or on disk."""

    def empty() -> dict[str, int] | None:
        stats = store_stats()
        if stats["used"] == 0 and stats["objects"] == 0 and stats["spilled_objects"] == 0:
            return stats
        return None

    return wait_for_condition(empty, timeout=timeout)


# ============================================================================ clusters
class ClusterFactory:
    """Clusters with quick failure detection; ``shutdown`` ends them and restores the environment."""

    def __init__(self) -> None:
        self.clusters: list[Cluster] = []
        self.saved: dict[str, str | None] = {}

    def set_env(self, env: dict[str, str]) -> None:
        for key, value in env.items():
            self.saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        reset_config()

    def make(self, head_cpus: float = 1, env: dict[str, str] | None = None, **head_args: Any) -> Cluster:
        self.set_env({**QUICK_DETECTION, **(env or {})})
        cluster = Cluster(initialize_head=False, shutdown_at_exit=False)
        self.clusters.append(cluster)  # registered before any process starts
        head_args.setdefault("object_store_memory", 200 * MiB)
        cluster.add_node(num_cpus=head_cpus, **head_args)
        return cluster

    def shutdown(self) -> None:
        try:
            for cluster in self.clusters:
                cluster.shutdown()
        finally:
            for key, old in self.saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
            reset_config()


def node_alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ember.nodes())


# ============================================================================ gates
class Gate:
    """A file a task waits for (at most a minute); the test opens it."""

    def __init__(self, path: Any) -> None:
        self.path = str(path)

    def open(self) -> None:
        with open(self.path, "w"):
            pass

    @staticmethod
    def wait(path: str, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test never opened {path}")
            time.sleep(0.005)


# ============================================================================ containers of refs
class Box:
    """A user class holding refs (and padding, so that containers live in the object store)."""

    def __init__(self, refs: list[Any], pad: Any = None) -> None:
        self.refs = refs
        self.pad = pad


#: Containers carry this much padding: over the inline limit, so they are stored in the object
#: store like the values they hold (and are freed from it with their owner).
CONTAINER_PAD = 128 * 1024
SHAPES = ("list", "dict", "user_class", "nested")


def build(shape: str, refs: list[Any]) -> Any:
    """A value of the given shape holding ``refs`` (in order) and some padding."""
    pad = np.zeros(CONTAINER_PAD, dtype=np.uint8)
    if shape == "list":
        return [*refs, pad]
    if shape == "dict":
        return {"refs": {i: r for i, r in enumerate(refs)}, "pad": pad}
    if shape == "user_class":
        return Box(list(refs), pad)
    return {"a": [(Box(list(refs)),)], "pad": pad}


def inner_refs(value: Any) -> list[Any]:
    """The refs a value holds, in order.

    (An explicit stack, not a recursive closure: a closure that calls itself is a reference
    cycle, and the list it filled, refs included, would live until the garbage collector ran.)
    """
    out: list[Any] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, ember.ObjectRef):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            stack.extend(reversed(v))
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, Box):
            stack.append(v.refs)
    return out


def describe(ref: Any, timeout: float = 30) -> tuple[str, Any]:
    """What reading ``ref`` gives: ("data", digest), ("container", [inner hex ids]) or ("lost", error name)."""
    from ember.exceptions import ObjectLostError

    try:
        value = ember.get(ref, timeout=timeout)
    except ObjectLostError as exc:
        return "lost", type(exc).__name__
    if isinstance(value, np.ndarray):
        return "data", digest(value)
    return "container", [r.hex() for r in inner_refs(value)]
