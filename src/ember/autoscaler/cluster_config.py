"""The cluster YAML (Ray's keys), read and checked into a ``ClusterConfig``.

    cluster_name: demo
    max_workers: 3                  # worker nodes in all (the head is not counted)
    idle_timeout_minutes: 5         # a worker idle this long is removed (fractions allowed)
    upscaling_speed: 1.0            # nodes launching at once: this times the nodes running (at least 5)
    provider: {type: fake_multinode}
    head_node_type: head
    available_node_types:
      head: {resources: {CPU: 0}, node_config: {}}
      cpu_worker:
        resources: {CPU: 1}
        min_workers: 0
        max_workers: 3
        node_config: {}

Every mistake is an ``AutoscalerConfigError`` naming the file, the key and what is
wrong. Keys of Ray's YAML that set up machines over SSH (``auth``, ``setup_commands``,
``file_mounts``, ``docker``, ...) are accepted and unused: providers here start nodes
themselves. Any other key is a mistake (a typo must not be ignored silently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ember.exceptions import AutoscalerConfigError

#: Ray's top-level keys used here.
_USED = {"cluster_name", "max_workers", "idle_timeout_minutes", "upscaling_speed", "provider",
         "available_node_types", "head_node_type"}
#: Ray's top-level keys for machine set-up over SSH: accepted, not used by these providers.
_IGNORED = {"auth", "docker", "file_mounts", "cluster_synced_files", "file_mounts_sync_continuously",
            "rsync_exclude", "rsync_filter", "initialization_commands", "setup_commands",
            "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands", "head_node", "worker_nodes", "min_workers", "no_restart",
            "metadata"}
_NODE_TYPE_KEYS = {"node_config", "resources", "min_workers", "max_workers", "worker_setup_commands",
                   "docker", "labels"}
#: Ray's defaults.
DEFAULT_MAX_WORKERS = 2
DEFAULT_IDLE_TIMEOUT_MINUTES = 5.0
DEFAULT_UPSCALING_SPEED = 1.0


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    min_workers: int
    max_workers: int
    node_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterConfig:
    cluster_name: str
    max_workers: int
    idle_timeout_s: float
    upscaling_speed: float
    provider: dict[str, Any]
    node_types: dict[str, NodeType]
    head_node_type: str
    #: The file it was read from ("" when built from a dict).
    source: str = ""

    @property
    def worker_types(self) -> dict[str, NodeType]:
        """Node types the autoscaler launches (every type but the head's)."""
        return {name: t for name, t in self.node_types.items() if name != self.head_node_type}


def load(path: str) -> ClusterConfig:
    """Read and check a cluster YAML file."""
    try:
        import yaml
    except ImportError as exc:
        raise AutoscalerConfigError("reading a cluster YAML needs PyYAML: pip install 'ember[autoscaler]'") from exc

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as exc:
        raise AutoscalerConfigError(f"cannot read the cluster config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise AutoscalerConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse(raw, source=path)


def parse(raw: Any, source: str = "") -> ClusterConfig:
    """Check a cluster config given as a dict (what the YAML holds)."""
    where = source or "the cluster config"

    def fail(key: str, problem: str) -> AutoscalerConfigError:
        return AutoscalerConfigError(f"{where}: {key}: {problem}")

    if not isinstance(raw, dict):
        raise AutoscalerConfigError(f"{where}: must be a mapping of Ray's cluster keys, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - _USED - _IGNORED)
    if unknown:
        raise fail(unknown[0], f"unknown key; the keys are {', '.join(sorted(_USED))} "
                   "(and Ray's SSH set-up keys, which are ignored)")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        if key not in raw:
            raise fail(key, "is required")
    name = raw["cluster_name"]
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise fail("cluster_name", f"must be a non-empty name without '/', got {name!r}")
    max_workers = _count(raw.get("max_workers", DEFAULT_MAX_WORKERS), "max_workers", fail)
    minutes = _number(raw.get("idle_timeout_minutes", DEFAULT_IDLE_TIMEOUT_MINUTES), "idle_timeout_minutes", fail)
    speed = _number(raw.get("upscaling_speed", DEFAULT_UPSCALING_SPEED), "upscaling_speed", fail)
    if speed <= 0:
        raise fail("upscaling_speed", f"must be above 0, got {speed:g}")
    provider = raw["provider"]
    if not isinstance(provider, dict) or not isinstance(provider.get("type"), str):
        raise fail("provider", "must be a mapping with a 'type' (e.g. {type: fake_multinode})")
    types_raw = raw["available_node_types"]
    if not isinstance(types_raw, dict) or not types_raw:
        raise fail("available_node_types", "must be a non-empty mapping of node type name to its settings")
    types = {str(n): _node_type(str(n), t, max_workers, fail) for n, t in types_raw.items()}
    head = raw["head_node_type"]
    if head not in types:
        raise fail("head_node_type", f"{head!r} is not one of available_node_types ({', '.join(sorted(types))})")
    config = ClusterConfig(name, max_workers, minutes * 60.0, speed, dict(provider), types, head, source)
    minimum = sum(t.min_workers for t in config.worker_types.values())
    if minimum > max_workers:
        raise fail("max_workers", f"is {max_workers}, but the node types' min_workers add up to {minimum}")
    return config


def _node_type(name: str, raw: Any, global_max: int, fail: Any) -> NodeType:
    key = f"available_node_types.{name}"
    if not isinstance(raw, dict):
        raise fail(key, f"must be a mapping (resources, min_workers, max_workers, node_config), got {raw!r}")
    unknown = sorted(set(map(str, raw)) - _NODE_TYPE_KEYS)
    if unknown:
        raise fail(f"{key}.{unknown[0]}", f"unknown key; a node type has {', '.join(sorted(_NODE_TYPE_KEYS))}")
    resources = raw.get("resources", {})
    if not isinstance(resources, dict):
        raise fail(f"{key}.resources", f"must be a mapping of resource name to amount, got {resources!r}")
    amounts: dict[str, float] = {}
    for resource, amount in resources.items():
        amounts[str(resource)] = _number(amount, f"{key}.resources.{resource}", fail)
        if amounts[str(resource)] < 0:
            raise fail(f"{key}.resources.{resource}", f"must not be negative, got {amount!r}")
    min_workers = _count(raw.get("min_workers", 0), f"{key}.min_workers", fail)
    max_workers = _count(raw.get("max_workers", global_max), f"{key}.max_workers", fail)
    if min_workers > max_workers:
        raise fail(f"{key}.min_workers", f"is {min_workers}, above the type's max_workers {max_workers}")
    node_config = raw.get("node_config", {})
    if not isinstance(node_config, dict):
        raise fail(f"{key}.node_config", f"must be a mapping, got {node_config!r}")
    return NodeType(name, amounts, min_workers, max_workers, dict(node_config))


def _number(value: Any, key: str, fail: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"must be a number, got {value!r}")
    return float(value)


def _count(value: Any, key: str, fail: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(key, f"must be a whole number >= 0, got {value!r}")
    return value
