"""``ember microbenchmark`` under two source trees, alternated, with medians and ratios.

    python3 benchmarks/compare_trees.py --before OLD/src --after NEW/src [--rounds 3]
        [--filter NAME ...] [--duration 2]

For a before/after of a change on a shared machine: each round runs every chosen workload
once under each tree (in a fresh interpreter and cluster, ``PYTHONPATH=<tree>``), the order
of the trees swapped every round so that the machine's drift falls on both. Printed per
workload: the median operations per second of each tree and after/before (> 1: faster).
Make a tree with ``git worktree add --detach /tmp/before <commit>``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

DEFAULT_FILTERS = (
    "single client get calls (Plasma Store)", "single client put calls (Plasma Store)",
    "single client tasks sync", "single client tasks async", "multi client tasks async",
    "1:1 actor calls sync", "1:1 actor calls async", "n:n actor calls async",
    "single client wait 1k refs", "actor creation",
)


def run_once(tree: str, workload: str, duration: float) -> float | None:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(
        [sys.executable, "-m", "ember.cli", "microbenchmark", "--filter", workload, "--duration", str(duration)],
        env=env, capture_output=True, text=True, timeout=900, cwd="/tmp",
    ).stdout
    for line in out.splitlines():
        match = re.match(rf"{re.escape(workload)} per second ([\d.]+)", line)
        if match:
            return float(match.group(1))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the older tree's src folder")
    parser.add_argument("--after", required=True, help="the newer tree's src folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--filter", action="append", help="an exact workload name (repeatable)")
    args = parser.parse_args()
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    for path in trees.values():
        if not os.path.isdir(os.path.join(path, "ember")):
            parser.error(f"{path} has no ember package: give a tree's src folder")
    workloads = args.filter or list(DEFAULT_FILTERS)
    results: dict[tuple[str, str], list[float]] = {(w, t): [] for w in workloads for t in trees}
    for number in range(args.rounds):
        order = list(trees) if number % 2 == 0 else list(reversed(list(trees)))
        for workload in workloads:
            for name in order:
                value = run_once(trees[name], workload, args.duration)
                if value is not None:
                    results[(workload, name)].append(value)
        print(f"round {number + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    print(f"{'workload':42} {'before/s':>10} {'after/s':>10} {'after/before':>13}")
    for workload in workloads:
        before, after = results[(workload, "before")], results[(workload, "after")]
        if not before or not after:
            print(f"{workload:42} {'(no result)':>10}")
            continue
        b, a = statistics.median(before), statistics.median(after)
        print(f"{workload:42} {b:10.1f} {a:10.1f} {a / b:13.2f}")


if __name__ == "__main__":
    main()
