"""The node daemon's metrics: what its processes report, its own, and the metrics port.

Processes send application metrics in batches
(``report_metrics``, see ``ember.core.metrics_recorder``); a scrape of the
metrics port (``metrics_http``) builds every family at that moment: the
application metrics, resources, object store, node CPU and memory, per-
component memory and CPU, and on the head node the control service's actor
counts. Nothing is computed between scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from ember._private import resources as res
from ember._private import session
from ember._private.config import config
from ember._private.version import __version__
from ember.exceptions import ConnectionLost, RemoteError
from ember.protocol import raylet as msg
from ember.protocol.gcs import ActorRecord
from ember.raylet import metric_families, system_metrics
from ember.raylet.clients import ClientRegistry
from ember.raylet.control_link import ControlServiceLink
from ember.raylet.lease_table import LeaseTable
from ember.raylet.metric_families import COUNTER, Family
from ember.raylet.metrics_http import MetricsHttpServer
from ember.raylet.node import NodeContext
from ember.raylet.object_store import ObjectStore
from ember.raylet.user_metrics import UserMetrics
from ember.raylet.worker_pool import WorkerPool, WorkerState
from ember.rpc import Connection

logger = logging.getLogger(__name__)


class MetricsService:
    def __init__(self, node: NodeContext, table: LeaseTable, store: ObjectStore, pool: WorkerPool,
                 clients: ClientRegistry, link: ControlServiceLink, listen_fd: int = -1, port: int = 0) -> None:
        self.node = node
        self.table = table
        self.store = store
        self.pool = pool
        self.clients = clients
        self.link = link
        #: An inherited listening socket (``init`` binds it), else the port to bind.
        self._listen_fd = listen_fd
        self._port = port
        session = system_metrics.session_name(node.session_dir)
        self._raylet_labels = {
            "Component": "raylet", "NodeAddress": node.node_ip, "SessionName": session, "Version": __version__,
        }
        self._node_labels = {
            "IsHeadNode": "true" if node.is_head else "false",
            "RayNodeType": "head" if node.is_head else "worker",
            "SessionName": session, "Version": __version__, "ip": node.node_ip,
        }
        self.user_metrics = UserMetrics(config().metrics_max_series, {
            "NodeAddress": node.node_ip, "SessionName": session, "Version": __version__,
        })
        self._os_sampler = system_metrics.OsSampler()
        #: Each local process's task counts (its latest report), dropped when it disconnects.
        self.task_counts: dict[bytes, list[list[Any]]] = {}
        self.metrics_server: MetricsHttpServer | None = None

    async def start(self) -> None:
        if self._listen_fd >= 0:
            sock = socket.socket(fileno=self._listen_fd)
        else:
            from ember._private.node import bind_listener

            sock = bind_listener(self.node.node_ip, self._port)
        self.metrics_server = MetricsHttpServer(sock, self._render_metrics, config().metrics_request_timeout_s)
        await self.metrics_server.start()

    async def stop(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.stop()

    @property
    def port(self) -> int:
        return self.metrics_server.port if self.metrics_server is not None else 0

    def rpc_report_metrics(self, conn: Connection, batch: msg.MetricsBatch) -> None:
        worker_id = batch.worker_id
        if batch.points is not None:
            self.user_metrics.report(worker_id, {"defs": batch.defs, "points": batch.points})
        tasks = batch.tasks
        if tasks is not None:
            if worker_id not in self.task_counts:
                # A process's counts go with it (as in Ray, whose per-process gauges stop).
                def forget(_conn: Connection) -> None:
                    self.task_counts.pop(worker_id, None)

                conn.add_close_callback(forget)
            self.task_counts[worker_id] = tasks

    async def _render_metrics(self, accept: str) -> tuple[bytes, str]:
        families = await self.metric_families()
        return metric_families.render(families, accept)

    async def metric_families(self) -> list[Family]:
        """Every metric of this node now."""
        families = self.user_metrics.families()
        families.append(Family(
            "ember_metrics_dropped_records", COUNTER,
            "Application metric records this node dropped (conflicting definitions or too many series).",
            tuple(self._raylet_labels), [(tuple(self._raylet_labels.values()), float(self.user_metrics.dropped))],
        ))
        cluster_labels = {k: v for k, v in self._raylet_labels.items() if k != "Component"}
        families.append(system_metrics.tasks(self.task_counts.values(), cluster_labels))
        families.append(system_metrics.resources(res.to_float(self.table.total), res.to_float(self.table.available), self._raylet_labels))
        stats = dict(self.store.stats())
        stats["unsealed"] = sum(e.size for e in self.store.objects.values() if not e.sealed)
        families += system_metrics.object_store(stats, self._raylet_labels)
        if self.node.is_head:
            actors = await self._gcs_actors()
            if actors is not None:
                families.append(system_metrics.actors(actors, cluster_labels))
        components = self._components()
        labels = {k: self._node_labels[k] for k in ("SessionName", "Version", "ip")}
        families += await asyncio.get_running_loop().run_in_executor(None, self._sample_os, components, labels)
        return families

    def _sample_os(self, components: list[tuple[str, int]], labels: dict[str, str]) -> list[Family]:
        """The node's and its processes' CPU and memory (in a thread: it reads /proc)."""
        return self._os_sampler.node(self._node_labels) + self._os_sampler.components(components, labels)

    async def _gcs_actors(self) -> list[ActorRecord] | None:
        """The control service's actor table (head node; None when it does not answer)."""
        if not self.link.connected:
            return None
        try:
            actors: list[ActorRecord] = await self.link.call("list_actors", None, config().metrics_gcs_timeout_s)
            return actors
        except (ConnectionLost, RemoteError, asyncio.TimeoutError) as exc:
            logger.debug("no actor counts for this scrape: %s", exc)
            return None

    def _components(self) -> list[tuple[str, int]]:
        """(Ray's component name, pid) of every Ember process of this node."""
        out = [("raylet", os.getpid())]
        if self.node.is_head:  # the head's other daemons, as their pid files name them now
            pids = session.read_pid_files(self.node.session_dir)
            out += [(name, pids[name]) for name in ("gcs", "dashboard") if name in pids]
        launcher = self.pool.launcher
        zygote = getattr(launcher, "proc", None)
        if zygote is not None and zygote.poll() is None:
            out.append(("ember::fork_server", zygote.pid))
        for worker in self.pool.alive():
            out.append(("ray::IDLE" if worker.state is WorkerState.IDLE else "ray::worker", worker.pid))
        out += [("driver", pid) for pid in self.clients.driver_pids()]
        return out
