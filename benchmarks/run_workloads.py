"""Run Ember's microbenchmark workloads under Ember or under Ray, in this interpreter.

    python3 benchmarks/run_workloads.py --runtime ember --out r.json
    /work/rayenv/bin/python benchmarks/run_workloads.py --runtime ray --out r.json

The workload definitions are Ember's own (``src/ember/bench/microbenchmark.py``),
loaded *by path*, so the Ray virtualenv needs no Ember installed: that file
imports only the standard library and takes the runtime module as a
parameter. Starts a fresh local cluster (``init(num_cpus=N)``), waits
``--settle`` seconds for start-up work to finish, runs the selected
workloads, shuts down, and writes the results as JSON to ``--out``.
``compare_with_ray.py`` drives this script once per workload and runtime.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DEFINITIONS = os.path.join(HERE, "..", "src", "ember", "bench", "microbenchmark.py")


def load_definitions(path: str):
    # Not registered in sys.modules under an importable name, and the remote
    # functions are closures: both runtimes pickle them by value, so workers
    # never need to import this file.
    spec = importlib.util.spec_from_file_location("_ember_microbenchmark_definitions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=["ember", "ray"], required=True)
    parser.add_argument("--names", default=None, help="JSON list of exact workload names (default: all).")
    parser.add_argument("--filter", default=None, help="Only workloads whose name contains this.")
    parser.add_argument("--duration", type=float, default=2.0, help="Timed seconds per workload.")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--settle", type=float, default=2.0, help="Seconds to wait after init.")
    parser.add_argument("--definitions", default=DEFAULT_DEFINITIONS, help="Path of microbenchmark.py.")
    parser.add_argument("--out", required=True, help="Where to write the JSON results.")
    args = parser.parse_args()

    defs = load_definitions(args.definitions)
    names = json.loads(args.names) if args.names else None
    if args.runtime == "ember":
        import ember as ray
    else:
        import ray  # type: ignore[no-redef]

    started = time.perf_counter()
    # The same settings for both: a fresh local cluster with N CPUs, workers'
    # output not streamed to this terminal. (Ray has no dashboard here: the
    # virtualenv holds plain `ray`, not `ray[default]`.)
    ray.init(address="local", num_cpus=args.num_cpus, log_to_driver=False, resources={"custom": 100})
    init_seconds = time.perf_counter() - started
    try:
        time.sleep(args.settle)
        results = defs.run_workloads(ray, args.filter, args.duration, names)
    finally:
        ray.shutdown()
    with open(args.out, "w") as f:
        json.dump({"runtime": args.runtime, "version": getattr(ray, "__version__", "?"),
                   "python": sys.version.split()[0], "init_seconds": init_seconds,
                   "results": results}, f)


if __name__ == "__main__":
    main()
