"""Many ``num_cpus=0`` actors alive on one node: time to create them and memory per actor.

    python3 benchmarks/many_actors.py [--actors 1000] [--num-cpus 2] [--ray]

Creates the actors, waits until every one has answered a call, then reports
the wall time, the proportional set size (PSS: shared pages divided among the
processes sharing them) per actor process, the node daemon's open file
descriptors, and the time to end them all. ``--ray`` runs the same program
under Ray (``/work/rayenv/bin/python``), for comparison.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def run(num_actors: int, num_cpus: int, use_ray: bool) -> None:
    import psutil

    if use_ray:
        import ray as runtime  # the Ray virtualenv's, only with --ray
    else:
        import ember as runtime

    t0 = time.perf_counter()
    runtime.init(num_cpus=num_cpus, object_store_memory=100 * 1024 * 1024)
    init_s = time.perf_counter() - t0

    @runtime.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            return os.getpid()

    t0 = time.perf_counter()
    actors = [Idle.remote() for _ in range(num_actors)]
    pids = runtime.get([a.pid.remote() for a in actors], timeout=1800)
    create_s = time.perf_counter() - t0
    assert len(set(pids)) == num_actors, "every actor runs in a process of its own"

    pss = rss = 0
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        pss += info.pss
        rss += info.rss
    t0 = time.perf_counter()
    again = runtime.get([a.pid.remote() for a in actors], timeout=600)
    call_all_s = time.perf_counter() - t0
    assert again == pids
    daemon_fds = ""
    if not use_ray:
        me = psutil.Process()
        for child in me.children(recursive=True):
            if child.cmdline()[1:3] == ["-m", "ember.raylet"]:
                daemon_fds = f", node daemon open files: {child.num_fds()}"
    mib = 1024 * 1024
    print(f"runtime: {'ray' if use_ray else 'ember'}, {num_actors} actors with num_cpus=0 on one node of {num_cpus} CPUs")
    print(f"init: {init_s:.2f} s")
    print(f"create all and first call answered: {create_s:.1f} s ({1000 * create_s / num_actors:.1f} ms per actor)")
    print(f"one more call to each: {call_all_s:.2f} s")
    print(f"memory per actor process: PSS {pss / num_actors / mib:.1f} MiB, RSS {rss / num_actors / mib:.1f} MiB "
          f"(total PSS {pss / mib / 1024:.2f} GiB){daemon_fds}")
    del actors
    t0 = time.perf_counter()
    runtime.shutdown()
    print(f"shutdown: {time.perf_counter() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", type=int, default=1000)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="run under Ray (/work/rayenv/bin/python)")
    parser.add_argument("--ray-python", default="/work/rayenv/bin/python")
    parser.add_argument("--_in-ray", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray and not args._in_ray:
        cmd = [args.ray_python, os.path.abspath(__file__), "--actors", str(args.actors),
               "--num-cpus", str(args.num_cpus), "--ray", "--_in-ray"]
        sys.exit(subprocess.call(cmd))
    run(args.actors, args.num_cpus, args.ray)


if __name__ == "__main__":
    main()
