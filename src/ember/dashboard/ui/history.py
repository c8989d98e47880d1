"""The last minutes of cluster use, sampled in the server so the Overview needs no Prometheus.

A fixed-size ring of samples (``dashboard_history_samples`` every
``dashboard_history_period_s``): CPU, host memory and object-store use, and tasks by
state. Memory is bounded by the ring's size, whatever the cluster does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from ember.exceptions import RpcError

logger = logging.getLogger(__name__)

FIELDS = ("t", "cpu_used", "cpu_total", "mem_used", "mem_total", "store_used", "store_total",
          "running", "pending", "finished", "failed")


class ClusterHistory:
    def __init__(self, sample: Callable[[], Awaitable[dict[str, float]]], period_s: float, samples: int) -> None:
        self._sample = sample
        self.period_s = period_s
        self._ring: deque[tuple[float, ...]] = deque(maxlen=samples)

    def record(self, values: dict[str, float]) -> None:
        self._ring.append(tuple(float(values.get(name, 0.0)) for name in FIELDS))

    async def run(self) -> None:
        """Sample forever (owned by the server: cancelled when it stops)."""
        while True:
            try:
                values = await self._sample()
                values["t"] = time.time()
                self.record(values)
            except (RpcError, asyncio.TimeoutError, OSError) as exc:
                logger.info("cluster history: no sample this time: %s", exc)
            await asyncio.sleep(self.period_s)

    def series(self) -> dict[str, list[float]]:
        """Columns for the charts: percentages of use, and tasks finished/failed per second."""
        rows = list(self._ring)
        col = {name: [r[i] for r in rows] for i, name in enumerate(FIELDS)}

        def pct(used: list[float], total: list[float]) -> list[float]:
            return [round(100.0 * u / t, 1) if t else 0.0 for u, t in zip(used, total)]

        def rate(counts: list[float]) -> list[float]:
            out = [0.0]
            for i in range(1, len(rows)):
                dt = col["t"][i] - col["t"][i - 1]
                out.append(round(max(0.0, counts[i] - counts[i - 1]) / dt, 2) if dt > 0 else 0.0)
            return out[: len(rows)]

        return {
            "t": [round(t, 2) for t in col["t"]],
            "cpu_pct": pct(col["cpu_used"], col["cpu_total"]),
            "mem_pct": pct(col["mem_used"], col["mem_total"]),
            "store_pct": pct(col["store_used"], col["store_total"]),
            "running": col["running"],
            "pending": col["pending"],
            "finished_rate": rate(col["finished"]),
            "failed_rate": rate(col["failed"]),
        }
