"""The node provider interface: how the autoscaler gets and gives back machines.

A provider knows one cluster (``cluster_name``) and the nodes it created for it. The
autoscaler calls it from a worker thread (calls may block: a cloud API call, starting
a process); it never calls two methods of one provider at once. To add a provider (a
cloud, Kubernetes), subclass ``NodeProvider`` and name it in the cluster YAML:

    provider:
      type: external
      module: my_package.my_module.MyProvider   # NodeProvider subclass

Ids are strings chosen by the provider (an instance id, a pod name, a pid...). Tags are
string key/values the autoscaler sets at creation and reads back (``TAG_NODE_KIND``,
``TAG_USER_NODE_TYPE``, ``TAG_NODE_STATUS``; Ray's tag names) so that a restarted
autoscaler finds its nodes and their types again. A provider that can say which
cluster node a machine runs (its node daemon's node id) sets ``TAG_NODE_ID``; otherwise
the autoscaler matches nodes by ``internal_ip``.

Errors: ``create_node`` and ``terminate_node`` raise ``NodeProviderError`` (or any
exception) when they fail; the autoscaler retries with backoff and reports the failure.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any

from ember.exceptions import AutoscalerConfigError

#: Ray's tag names.
TAG_NODE_KIND = "ray-node-kind"
TAG_USER_NODE_TYPE = "ray-user-node-type"
TAG_NODE_STATUS = "ray-node-status"
TAG_CLUSTER_NAME = "ray-cluster-name"
#: The hex node id of the node daemon running on the machine (when the provider knows it).
TAG_NODE_ID = "ember-node-id"
NODE_KIND_WORKER = "worker"
NODE_KIND_HEAD = "head"
STATUS_UP_TO_DATE = "up-to-date"


class NodeProvider(abc.ABC):
    """One cluster's machines. ``provider_config`` is the YAML's ``provider`` mapping."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        self.provider_config = provider_config
        self.cluster_name = cluster_name

    @abc.abstractmethod
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        """Ids of this cluster's nodes that are starting or running and have every tag in ``tag_filters``."""

    @abc.abstractmethod
    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        """Start ``count`` nodes with ``node_config`` (the node type's) and ``tags``; returns ``{id: info}``."""

    def create_node_with_resources_and_labels(self, node_config: dict[str, Any], tags: dict[str, str], count: int,
                                              resources: dict[str, float], labels: dict[str, str]) -> dict[str, Any]:
        """``create_node``, told the node type's ``resources`` and ``labels`` (Ray's name; providers that
        cannot choose them, such as clouds whose instance type fixes them, keep this default)."""
        return self.create_node(node_config, tags, count)

    @abc.abstractmethod
    def terminate_node(self, node_id: str) -> None:
        """End a node (a node already gone is not an error)."""

    @abc.abstractmethod
    def node_tags(self, node_id: str) -> dict[str, str]:
        """The node's tags."""

    @abc.abstractmethod
    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        """Add or change tags of a node."""

    @abc.abstractmethod
    def internal_ip(self, node_id: str) -> str:
        """The address other nodes of the cluster reach it at."""

    def external_ip(self, node_id: str) -> str | None:
        """The address from outside the cluster's network (None: same as internal)."""
        return None

    def terminate_nodes(self, node_ids: list[str]) -> None:
        for node_id in node_ids:
            self.terminate_node(node_id)

    def is_running(self, node_id: str) -> bool:
        return node_id in self.non_terminated_nodes({})

    def shutdown(self) -> None:
        """Release what the provider holds (connections, threads); nodes stay."""
        return None


#: Built-in providers by ``provider.type``: "module:Class", imported when used.
PROVIDERS = {"fake_multinode": "ember.autoscaler.fake_multinode:FakeMultiNodeProvider"}


def provider_class(provider_config: dict[str, Any]) -> type[NodeProvider]:
    """The provider class a cluster YAML's ``provider`` mapping names (a clear error if none)."""
    kind = provider_config.get("type")
    if kind == "external":
        path = provider_config.get("module")
        if not isinstance(path, str) or "." not in path:
            raise AutoscalerConfigError("provider.module: an external provider needs module: package.module.Class")
        module_name, _, class_name = path.rpartition(".")
    elif kind in PROVIDERS:
        module_name, _, class_name = PROVIDERS[kind].partition(":")
    else:
        raise AutoscalerConfigError(
            f"provider.type: unknown provider {kind!r}; use one of {', '.join(sorted(PROVIDERS))} "
            "or type: external with module: package.module.Class"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise AutoscalerConfigError(f"provider: cannot import {module_name}.{class_name}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, NodeProvider)):
        raise AutoscalerConfigError(f"provider: {module_name}.{class_name} is not a NodeProvider subclass")
    return cls
