"""``ember.util.multiprocessing.Pool`` against the standard library's ``multiprocessing.Pool``.

    python3 benchmarks/pool_vs_multiprocessing.py [--items 10000] [--processes 2] [--rounds 30]
    /work/rayenv/bin/python benchmarks/pool_vs_multiprocessing.py --runtime ray   # Ray's Pool, same workload

Both pools have ``--processes`` processes and are started (and warmed up with
one ``map``) before timing. Each round times one ``pool.map(square, range(items))``
(default chunksize) on each pool, alternating, so the noise of a shared machine
falls on both; the table gives the median and the best round and the ratio
Ember / standard library (lower is better; 1.0 means as fast). Ray's users report
Ray's Pool about 20x slower than the standard library on this workload.
Pool start-up (until every process answers) is reported separately.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any


def square(x: int) -> int:
    return x * x


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runtime", choices=["ember", "ray"], default="ember",
                        help="Whose Pool to measure (ray: run this script with an interpreter that has Ray).")
    args = parser.parse_args()

    if args.runtime == "ray":
        import ray as ember  # noqa: I001 - the same code measures Ray's Pool
        from ray.util.multiprocessing import Pool
    else:
        import ember
        from ember.util.multiprocessing import Pool

    ember.init(num_cpus=args.processes, log_to_driver=False)
    items = range(args.items)
    expected = [square(x) for x in items]
    try:
        ember_start = time.perf_counter()
        ember_pool = Pool(args.processes)
        ember_pool.map(square, range(args.processes * 4), chunksize=1)  # every actor answered
        ember_start = time.perf_counter() - ember_start
        std_start = time.perf_counter()
        std_pool = multiprocessing.Pool(args.processes)
        std_pool.map(square, range(args.processes * 4), chunksize=1)
        std_start = time.perf_counter() - std_start
        with std_pool, ember_pool:
            assert ember_pool.map(square, items) == std_pool.map(square, items) == expected
            times: dict[str, list[float]] = {"ember": [], "stdlib": []}
            for _ in range(args.rounds):
                times["ember"].append(_time(lambda: ember_pool.map(square, items)))
                times["stdlib"].append(_time(lambda: std_pool.map(square, items)))
    finally:
        ember.shutdown()

    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"map of {args.items:,} small items, {args.processes} processes, {args.rounds} alternating rounds")
    print("| pool | median | best | start-up |")
    print("|---|---:|---:|---:|")
    print(f"| multiprocessing.Pool | {med['stdlib'] * 1e3:.2f} ms | {best['stdlib'] * 1e3:.2f} ms | {std_start:.3f} s |")
    print(f"| {args.runtime}.util.multiprocessing.Pool | {med['ember'] * 1e3:.2f} ms | {best['ember'] * 1e3:.2f} ms | {ember_start:.3f} s |")
    print(f"ratio {args.runtime} / standard library: median {med['ember'] / med['stdlib']:.2f}x, "
          f"best {best['ember'] / best['stdlib']:.2f}x (lower is better)")


if __name__ == "__main__":
    main()
