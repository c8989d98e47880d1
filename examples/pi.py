"""Estimate pi by Monte-Carlo sampling, spread over every core of a local Ember cluster.

    python examples/pi.py [--tasks 200] [--samples 200000]

Runs unchanged under Ray: replace ``import ember as ray`` with ``import ray``.
"""

from __future__ import annotations

import argparse
import random
import time

import ember as ray


@ray.remote
def sample(num_samples: int, seed: int) -> int:
    """How many of ``num_samples`` random points in the unit square fall inside the circle."""
    rng = random.Random(seed)
    inside = 0
    for _ in range(num_samples):
        x, y = rng.random(), rng.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200_000, help="samples per task")
    args = parser.parse_args()

    start = time.perf_counter()
    ray.init()
    ready = time.perf_counter()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    print(f"Cluster ready in {ready - start:.2f}s with {cpus} CPUs.")

    refs = [sample.remote(args.samples, seed) for seed in range(args.tasks)]
    inside = sum(ray.get(refs))
    elapsed = time.perf_counter() - ready
    total = args.tasks * args.samples
    print(f"pi ~= {4.0 * inside / total:.6f} from {total:,} samples")
    print(f"{args.tasks} tasks in {elapsed:.2f}s: {args.tasks / elapsed:.1f} tasks/s, "
          f"{total / elapsed / 1e6:.2f} M samples/s")

    # Throughput of tiny tasks, which measures the runtime rather than the arithmetic.
    tiny = time.perf_counter()
    ray.get([sample.remote(1, seed) for seed in range(2000)])
    print(f"2000 tiny tasks: {2000 / (time.perf_counter() - tiny):,.0f} tasks/s")
    ray.shutdown()


if __name__ == "__main__":
    main()
