"""Load reports: this node's resources, store and workers, sent to the control service.

A report goes every ``resource_report_period_s``, and soon after any change of
what is available (at most one per ``resource_report_min_interval_s``), so that
``available_resources()`` and other nodes' views are current. The answer is
the cluster view, which this node's lease service decides with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ember._private import resources as res
from ember._private.config import config
from ember._private.waiting import wait_event
from ember.raylet.cluster_view import ClusterView
from ember.raylet.control_link import ControlServiceLink
from ember.raylet.demand import IdleClock, queued_demand
from ember.raylet.lease_table import LeaseTable
from ember.raylet.node import NodeContext
from ember.raylet.object_store import ObjectStore
from ember.raylet.worker_pool import WorkerPool

logger = logging.getLogger(__name__)


class NodeReporter:
    def __init__(
        self,
        node: NodeContext,
        link: ControlServiceLink,
        table: LeaseTable,
        store: ObjectStore,
        pool: WorkerPool,
        view: ClusterView,
        on_view: Callable[[], None],
    ) -> None:
        self.node = node
        self.link = link
        self.table = table
        self.store = store
        self.pool = pool
        self.view = view
        #: Runs after each new cluster view (the lease service rebalances its queue).
        self._on_view = on_view
        self._wakeup = asyncio.Event()
        self.idle_clock = IdleClock(time.monotonic())

    def report_now(self) -> None:
        """Send a report (and so refresh our cluster view) without waiting for the period."""
        self._wakeup.set()

    def rpc_refresh_view(self, conn: Any, p: None) -> None:
        self.report_now()

    def report(self) -> dict[str, Any]:
        stats = self.store.stats()
        return {
            "node_id": self.node.node_id,
            "available": res.to_float(self.table.available),
            "total": res.to_float(self.table.total),
            "store_used": stats["used"],
            "store_objects": stats["objects"],
            "store_spilled": stats["spilled_bytes"],
            "store_fallback": stats["fallback_bytes"],
            "store_fallback_objects": stats["fallback_objects"],
            "num_workers": len(self.pool.alive()),
            # For an autoscaler: what waits here, and for how long the node has had no work.
            "demand": queued_demand(self.table.queue, self.table.available),
            "idle_s": self.idle_clock.update(self._busy(), time.monotonic()),
        }

    def _busy(self) -> bool:
        """A lease, a queued request or a placement-group bundle keeps the node from being idle."""
        table = self.table
        return bool(table.leases or table.queue or table.bundles.prepared or table.bundles.committed)

    async def run(self) -> None:
        period = config().resource_report_period_s
        min_interval = config().resource_report_min_interval_s
        last_sent = 0.0
        while True:
            wait = last_sent + min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last_sent = time.monotonic()
            if self.link.connected:
                try:
                    rows = await self.link.call("report", self.report(), timeout=config().resource_report_timeout_s)
                    self.view.update(rows, self.table.total, self.table.available)
                    self._on_view()
                except Exception as exc:  # a slow or restarting control service: try again next period
                    logger.debug("resource report failed: %s", exc)
            await wait_event(self._wakeup, period)
            self._wakeup.clear()
