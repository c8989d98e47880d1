"""Profile one microbenchmark workload across every Ember process with py-spy.

    pip install py-spy
    python3 benchmarks/profile_ember.py "single client tasks async" [--seconds 8] [--native]

Starts a local cluster, runs the workload in a loop while ``py-spy record
--subprocesses`` samples the driver and everything under it (node daemon,
control service, workers), then prints, per process role and thread, the
frames with the most samples (self time). ``--native`` shows C frames
(epoll, write, libc), but py-spy then pauses the processes to sample them,
which slows the workload down a lot.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run_workloads import DEFAULT_DEFINITIONS, load_definitions  # noqa: E402


def role_of(command: str) -> str:
    for marker, role in (("ember.raylet.zygote", "zygote"), ("ember.raylet", "raylet"),
                         ("worker_main", "worker"), ("ember.gcs", "gcs")):
        if marker in command:
            return role
    return "driver"


def summarize(path: str, top: int) -> None:
    self_samples: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            parts = stack.split(";")
            procs = [p for p in parts if p.startswith("process ")]
            threads = [p for p in parts if p.startswith("thread ")]
            frames = [p for p in parts if not p.startswith(("process ", "thread "))]
            thread = threads[0].split(":")[-1].strip() if threads else "main"
            key = f"{role_of(procs[-1]) if procs else '?'}/{thread or 'main'}"
            totals[key] += int(count)
            if frames:
                self_samples[key][frames[-1]] += int(count)
    grand = sum(totals.values()) or 1
    for key, n in totals.most_common():
        print(f"=== {key}: {n} samples ({100 * n / grand:.1f}% of all)")
        for frame, c in self_samples[key].most_common(top):
            print(f"   {100 * c / n:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Profile one Ember microbenchmark workload with py-spy.")
    parser.add_argument("workload", help="Exact workload name, e.g. 'single client tasks async'.")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--native", action="store_true", help="Sample C frames too (pauses processes).")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--raw", default=None, help="Keep py-spy's raw (collapsed) output here.")
    args = parser.parse_args()

    defs = load_definitions(DEFAULT_DEFINITIONS)
    matches = [w for w in defs.WORKLOADS if w[0] == args.workload]
    if not matches:
        sys.exit(f"unknown workload {args.workload!r}; one of: {', '.join(defs.WORKLOAD_NAMES)}")
    name, multiplier, build, needs_numpy = matches[0]
    np = None
    if needs_numpy:
        import numpy as np
    import ember

    raw = args.raw or tempfile.mktemp(suffix=".txt", prefix="ember_pyspy_")
    ember.init(address="local", num_cpus=args.num_cpus, log_to_driver=False)
    try:
        fn = build(ember, np, defs._Remotes(ember))
        fn()  # warm up: workers started, functions exported
        mode = ["--native"] if args.native else ["--nonblocking"]
        spy = subprocess.Popen(
            ["py-spy", "record", "-p", str(os.getpid()), "--subprocesses", "--threads", *mode,
             "--format", "raw", "-r", "250", "-d", str(int(args.seconds)), "-o", raw],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(1.0)  # py-spy attaches
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < args.seconds - 1 and spy.poll() is None:
            fn()
            calls += 1
        print(f"{name}: {calls * multiplier / (time.perf_counter() - start):.2f} per second while profiled")
        _, err = spy.communicate()
        if spy.returncode != 0:
            sys.exit(f"py-spy failed: {err.strip()[-500:]}")
    finally:
        ember.shutdown()
    summarize(raw, args.top)
    print(f"(raw samples: {raw})")


if __name__ == "__main__":
    main()
