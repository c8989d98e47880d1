"""The autoscaler service: the thin shell around ``scaling.decide`` (runs on the head).

Every ``autoscaler_update_interval_s`` it reads the cluster's demand and nodes from the
control service (``get_cluster_demand``) and the provider's nodes, decides, launches and
ends nodes through the provider (in a worker thread: provider calls may block), and
reports its status (nodes per type, launches, failures, infeasible and waiting demand,
recent events with their reasons) back to the control service (``autoscaler_report``),
where ``ember status`` and the HTTP server read it.

A provider that fails to launch a node type is retried after a backoff that doubles per
failure (``autoscaler_launch_backoff_initial_s`` .. ``_max_s``); each failure is an event
and a "failed" entry of the status; the cluster keeps working meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import deque
from typing import Any

from ember._private.config import config
from ember._private.waiting import wait_event
from ember.autoscaler import scaling
from ember.autoscaler.cluster_config import ClusterConfig
from ember.autoscaler.node_provider import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_CLUSTER_NAME,
    TAG_NODE_ID,
    TAG_NODE_KIND,
    TAG_NODE_STATUS,
    TAG_USER_NODE_TYPE,
    NodeProvider,
)

logger = logging.getLogger(__name__)


class LaunchBackoff:
    """When a node type may be launched again after provider failures (doubling pauses)."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._failures: dict[str, int] = {}
        self._next_try: dict[str, float] = {}

    def failed(self, node_type: str, now: float) -> float:
        count = self._failures.get(node_type, 0) + 1
        self._failures[node_type] = count
        pause = min(self.max_s, self.initial_s * 2.0 ** (count - 1))
        self._next_try[node_type] = now + pause
        return pause

    def succeeded(self, node_type: str) -> None:
        self._failures.pop(node_type, None)
        self._next_try.pop(node_type, None)

    def wait_s(self, node_type: str, now: float) -> float:
        """Seconds before ``node_type`` may be launched again (0: now)."""
        return max(0.0, self._next_try.get(node_type, 0.0) - now)


class Autoscaler:
    def __init__(self, cluster: ClusterConfig, provider: NodeProvider, gcs: Any) -> None:
        cfg = config()
        self.cluster = cluster
        self.provider = provider
        self.gcs = gcs
        self.limits = scaling.Limits(cfg.autoscaler_upscaling_initial_num_nodes, cfg.autoscaler_node_start_timeout_s)
        self.backoff = LaunchBackoff(cfg.autoscaler_launch_backoff_initial_s, cfg.autoscaler_launch_backoff_max_s)
        self.events: deque[dict[str, Any]] = deque(maxlen=cfg.autoscaler_max_events)
        self.failures: deque[dict[str, Any]] = deque(maxlen=cfg.autoscaler_max_events)
        #: provider id -> when this autoscaler first saw it (monotonic), for start timeouts.
        self._first_seen: dict[str, float] = {}
        #: Provider ids whose node daemon has joined the cluster at some point.
        self._joined: set[str] = set()
        self._infeasible_reported: set[str] = set()
        #: Idle nodes kept past the timeout -> the reason last recorded as an event.
        self._kept_reported: dict[str, str] = {}
        #: Resources the nodes of each type reported once joined (see _with_learned_resources).
        self._learned: dict[str, dict[str, float]] = {}
        self.last_decision = scaling.Decision()
        self.updates = 0

    # ------------------------------------------------------------------ events
    def event(self, kind: str, message: str, level: int = logging.INFO) -> None:
        logger.log(level, "%s: %s", kind, message)
        self.events.append({"time": time.time(), "kind": kind, "message": message})

    # ------------------------------------------------------------------ loop
    async def run(self, stop: asyncio.Event) -> None:
        interval = config().autoscaler_update_interval_s
        await self._adopt()
        self.event("started", f"autoscaler for cluster {self.cluster.cluster_name!r} "
                   f"({', '.join(self.cluster.worker_types) or 'no worker types'})")
        gap = config().autoscaler_min_update_gap_s
        wait_s = 0.0  # the first decision at once (min_workers)
        while not stop.is_set():
            pause = gap
            try:
                await self.update(wait_s)
                wait_s = interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a control service restarting, a provider bug: try again next round
                logger.exception("autoscaler update failed")
                self.event("update_failed", f"{type(exc).__name__}: {exc}", logging.WARNING)
                pause = interval
            await wait_event(stop, pause)

    async def _adopt(self) -> None:
        """Take over from an earlier autoscaler of this cluster (one that died and is restarted):
        keep its events, and count the nodes its provider still runs as this one's (they are
        matched to cluster nodes by their tags at every update, so none is launched twice)."""
        try:
            previous = await self.gcs.call("get_autoscaler_status", None)
        except Exception as exc:  # the control service restarting: the first update retries
            logger.warning("could not read the previous autoscaler's status: %s", exc)
            previous = None
        if previous and previous.get("cluster_name") == self.cluster.cluster_name:
            self.events.extend(previous.get("events") or [])
            self.failures.extend(previous.get("failed") or [])
        ids = await asyncio.to_thread(self.provider.non_terminated_nodes, {TAG_NODE_KIND: NODE_KIND_WORKER})
        if ids:
            kinds: dict[str, int] = {}
            for provider_id in ids:
                node_type = (await asyncio.to_thread(self.provider.node_tags, provider_id)).get(TAG_USER_NODE_TYPE, "?")
                kinds[node_type] = kinds.get(node_type, 0) + 1
            self.event("adopted", "took over the nodes the provider runs: "
                       + ", ".join(f"{count} {node_type}" for node_type, count in sorted(kinds.items())))

    async def update(self, wait_s: float = 0.0) -> scaling.Decision:
        """One decision; first waits up to ``wait_s`` for new demand (the control service wakes it)."""
        demand = await self.gcs.call("get_cluster_demand", {"wait_s": wait_s}, timeout=wait_s + 10.0)
        ids = await asyncio.to_thread(self.provider.non_terminated_nodes, {TAG_NODE_KIND: NODE_KIND_WORKER})
        tags = {pid: await asyncio.to_thread(self.provider.node_tags, pid) for pid in ids}
        workers, fixed, gcs_ids = self._nodes(demand["nodes"], ids, tags)
        wanted = scaling.Demand(
            shapes=[(shape, count) for shape, count in demand["tasks"] + demand["actors"]],
            placement_groups=[(pg["strategy"], pg["bundles"]) for pg in demand["placement_groups"]],
            requested=list(demand["requested"]),
        )
        for w in workers:
            if w.joined and w.alive and w.node_type in self.cluster.node_types:
                learned = self._learned.setdefault(w.node_type, {})
                learned.update({k: v for k, v in w.total.items() if "_group_" not in k})
        decision = scaling.decide(self._with_learned_resources(), workers, fixed, wanted, self.limits)
        self.last_decision = decision
        for description, reason in decision.infeasible:
            if description not in self._infeasible_reported:
                self._infeasible_reported.add(description)
                self.event("infeasible", f"{description}: {reason}", logging.WARNING)
        self._infeasible_reported &= {d for d, _ in decision.infeasible}
        for provider_id, reason in decision.kept:
            if self._kept_reported.get(provider_id) != reason:
                node = gcs_ids.get(provider_id, provider_id)
                self.event("kept", f"idle {tags.get(provider_id, {}).get(TAG_USER_NODE_TYPE, '?')} node "
                           f"{node[:12]} stays: {reason}")
        self._kept_reported = dict(decision.kept)
        drained = await self._drain({gcs_ids[p] for p in decision.idle if p in gcs_ids})
        for provider_id, reason in decision.terminate:
            if provider_id in decision.idle and gcs_ids.get(provider_id) not in drained:
                continue  # work reached it meanwhile: it stays
            await self._terminate(provider_id, tags.get(provider_id, {}), reason)
        for node_type, count in decision.launch.items():
            await self._launch(node_type, count, decision.launch_reasons.get(node_type, ""))
        self.updates += 1
        await self._report(demand, workers, gcs_ids, decision)
        return decision

    def _with_learned_resources(self) -> ClusterConfig:
        """The config with what nodes of each type turned out to have (memory, object store...) added
        to the resources the YAML names (the YAML's values win), as Ray does."""
        types = {name: dataclasses.replace(t, resources={**self._learned.get(name, {}), **t.resources})
                 for name, t in self.cluster.node_types.items()}
        return dataclasses.replace(self.cluster, node_types=types)

    def _nodes(self, live: list[dict[str, Any]], ids: list[str], tags: dict[str, dict[str, str]],
               ) -> tuple[list[scaling.WorkerNode], list[scaling.FixedNode], dict[str, str]]:
        by_id = {n["NodeID"]: n for n in live}
        now = time.monotonic()
        workers = []
        gcs_ids: dict[str, str] = {}
        for provider_id in ids:
            t = tags[provider_id]
            first = self._first_seen.setdefault(provider_id, now)
            node = by_id.get(t.get(TAG_NODE_ID, ""))
            if node is None and TAG_NODE_ID not in t:
                ip = self.provider.internal_ip(provider_id)
                node = next((n for n in live if n["NodeManagerAddress"] == ip and not n.get("IsHead")), None)
            if node is not None:
                self._joined.add(provider_id)
                gcs_ids[provider_id] = node["NodeID"]
            worker = scaling.WorkerNode(
                provider_id, t.get(TAG_USER_NODE_TYPE, ""), joined=provider_id in self._joined, age_s=now - first,
                alive=node is not None or provider_id not in self._joined,
            )
            if node is not None:
                worker.total = _plain(node["Resources"])
                worker.available = _plain(node["AvailableResources"])
                worker.idle_s = float(node.get("IdleSeconds", 0.0))
                # ObjectStoreObjects counts the fallback files too.
                worker.objects = int(node.get("ObjectStoreObjects") or 0)
                worker.spilled_bytes = int(node.get("ObjectStoreSpilled") or 0)
            workers.append(worker)
        for gone in set(self._first_seen) - set(ids):
            self._first_seen.pop(gone, None)
            self._joined.discard(gone)
        claimed = set(gcs_ids.values())
        fixed = [scaling.FixedNode(n["NodeID"], _plain(n["Resources"]), _plain(n["AvailableResources"]))
                 for n in live if n["NodeID"] not in claimed]
        return workers, fixed, gcs_ids

    async def _drain(self, node_ids: set[str]) -> set[str]:
        """Stop sending work to idle nodes about to be ended; those still idle once every node has
        seen that (``autoscaler_drain_settle_s``) are returned, the others are given work again."""
        drained = set()
        for node_id in node_ids:
            if await self.gcs.call("drain_node", {"node_id": bytes.fromhex(node_id), "drain": True}):
                drained.add(node_id)
        if not drained:
            return drained
        await asyncio.sleep(config().autoscaler_drain_settle_s)  # other nodes' views drop it at their next report
        live = {n["NodeID"]: n for n in (await self.gcs.call("get_cluster_demand", None))["nodes"]}
        busy = {node_id for node_id in drained if node_id in live and live[node_id].get("IdleSeconds", 0.0) <= 0}
        for node_id in busy:
            await self.gcs.call("drain_node", {"node_id": bytes.fromhex(node_id), "drain": False})
        return drained - busy

    async def _launch(self, node_type: str, count: int, reason: str) -> None:
        now = time.monotonic()
        wait = self.backoff.wait_s(node_type, now)
        if wait > 0:
            return  # the status shows the type waiting to retry
        t = self.cluster.node_types[node_type]
        tags = {TAG_NODE_KIND: NODE_KIND_WORKER, TAG_USER_NODE_TYPE: node_type, TAG_NODE_STATUS: STATUS_UP_TO_DATE,
                TAG_CLUSTER_NAME: self.cluster.cluster_name}
        try:
            created = await asyncio.to_thread(self.provider.create_node_with_resources_and_labels,
                                              dict(t.node_config), tags, count, dict(t.resources), {})
        except Exception as exc:
            pause = self.backoff.failed(node_type, time.monotonic())
            message = f"launching {count} {node_type} node(s) failed: {type(exc).__name__}: {exc}; retrying in {pause:g}s"
            self.failures.append({"time": time.time(), "node_type": node_type, "reason": str(exc)})
            self.event("launch_failed", message, logging.WARNING)
            return
        self.backoff.succeeded(node_type)
        now = time.monotonic()
        for provider_id in created:
            self._first_seen.setdefault(provider_id, now)
        self.event("scale_up", f"adding {count} {node_type} node(s): {reason}")

    async def _terminate(self, provider_id: str, tags: dict[str, str], reason: str) -> None:
        node_type = tags.get(TAG_USER_NODE_TYPE, "?")
        try:
            await asyncio.to_thread(self.provider.terminate_node, provider_id)
        except Exception as exc:
            self.event("terminate_failed", f"ending {node_type} node {provider_id} failed: {exc}", logging.WARNING)
            return
        if reason.startswith("it did not join") or reason.startswith("its node daemon died"):
            self.failures.append({"time": time.time(), "node_type": node_type, "reason": reason,
                                  "provider_id": provider_id})
        self.event("scale_down", f"removing {node_type} node {provider_id}: {reason}")

    # ------------------------------------------------------------------ status
    async def _report(self, demand: dict[str, Any], workers: list[scaling.WorkerNode], gcs_ids: dict[str, str],
                      decision: scaling.Decision) -> None:
        now = time.monotonic()
        ended = {pid for pid, _ in decision.terminate}
        active: dict[str, list[str]] = {}
        pending: list[dict[str, Any]] = []
        idle: dict[str, float] = {}
        types = {w.provider_id: w.node_type for w in workers}
        for w in workers:
            if w.provider_id in ended:
                continue
            if w.joined and w.alive:
                active.setdefault(w.node_type, []).append(gcs_ids.get(w.provider_id, w.provider_id))
                idle[gcs_ids.get(w.provider_id, w.provider_id)] = w.idle_s
            else:
                pending.append({"node_type": w.node_type, "provider_id": w.provider_id, "status": "launching"})
        for node_type in self.cluster.worker_types:
            wait = self.backoff.wait_s(node_type, now)
            if wait > 0 and decision.launch.get(node_type):
                pending.append({"node_type": node_type, "provider_id": "", "count": decision.launch[node_type],
                                "status": f"waiting {wait:.0f}s to retry a failed launch"})
        status = {
            "cluster_name": self.cluster.cluster_name,
            "config": self.cluster.source,
            "pid": os.getpid(),
            "time": time.time(),
            "head_node_type": self.cluster.head_node_type,
            "node_types": {name: {"resources": t.resources, "min_workers": t.min_workers, "max_workers": t.max_workers}
                           for name, t in self.cluster.node_types.items()},
            "max_workers": self.cluster.max_workers,
            "active": active,
            "idle_seconds": idle,
            "pending": pending,
            "failed": list(self.failures)[-20:],
            "demand": {"tasks": demand["tasks"], "actors": demand["actors"],
                       "placement_groups": demand["placement_groups"], "requested": demand["requested"]},
            "infeasible": [list(x) for x in decision.infeasible],
            "waiting": [list(x) for x in decision.waiting],
            "kept": [[gcs_ids.get(pid, pid), types.get(pid, "?"), reason] for pid, reason in decision.kept],
            "events": list(self.events),
        }
        shapes = scaling.node_type_shapes(self.cluster.worker_types)
        await self.gcs.call("autoscaler_report", {"status": status, "launchable": shapes})


def _plain(amounts: dict[str, float]) -> dict[str, float]:
    """Resources without the per-node ``node:<ip>`` markers (every node of a type differs there)."""
    return {k: v for k, v in amounts.items() if not k.startswith("node:")}
