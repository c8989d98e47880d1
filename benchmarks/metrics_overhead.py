"""What metrics cost on "tasks async" (submit 1000 no-op tasks, get them; repeat).

    python3 benchmarks/metrics_overhead.py [--rounds 3] [--seconds 3]

Three variants, alternated in one run so a shared machine's noise falls on all:
``off`` (``EMBER_enable_metrics_collection=0``: no task counts, no records),
``on`` (the default: every core worker counts its tasks for ``ray_tasks``, no
application metric used) and ``counter`` (on, and every task also increments a
``Counter`` with one tag). Each round starts a fresh ``init(num_cpus=2)``
cluster per variant. Printed per variant: median tasks/s, and the median CPU
seconds per 1000 tasks of the driver plus every process under it (steadier than
throughput on a loaded machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import psutil

import ember
from ember._private.config import reset_config
from ember.util.metrics import Counter

VARIANTS = ("off", "on", "counter")


@ember.remote
def noop() -> None:
    return None


@ember.remote
def counted() -> None:
    Counter("bench_tasks", tag_keys=("kind",)).inc(tags={"kind": "noop"})


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def run_variant(variant: str, seconds: float) -> tuple[float, float]:
    os.environ["EMBER_enable_metrics_collection"] = "0" if variant == "off" else "1"
    reset_config()
    ember.init(num_cpus=2, include_dashboard=False)
    try:
        fn = counted if variant == "counter" else noop
        ember.get([fn.remote() for _ in range(2000)])  # warm up: workers started, functions exported
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        done, cpu0, start = 0, _cpu(procs), time.perf_counter()
        while time.perf_counter() - start < seconds:
            ember.get([fn.remote() for _ in range(1000)])
            done += 1000
        elapsed, cpu = time.perf_counter() - start, _cpu(procs) - cpu0
        return done / elapsed, 1000 * cpu / done
    finally:
        ember.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            results[variant].append(run_variant(variant, args.seconds))
    for variant in VARIANTS:
        rates = [r for r, _ in results[variant]]
        cpus = [c for _, c in results[variant]]
        print(f"{variant:8s} {statistics.median(rates):8.0f} tasks/s   "
              f"{statistics.median(cpus):6.3f} CPU s per 1000 tasks   (rounds: {', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
