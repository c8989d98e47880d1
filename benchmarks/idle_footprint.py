"""An idle local cluster's memory and the time from import to the first task's result.

    python3 benchmarks/idle_footprint.py [--idle 14] [--no-dashboard] [--rounds 1]

Each round runs in a fresh interpreter: import ember, ``init()`` (with the head's HTTP
server unless ``--no-dashboard``), one task, then ``--idle`` seconds of nothing (longer than
``idle_worker_kill_s``, so the fresh-interpreter workers have been replaced by forks). Printed:
seconds from import to the first result, the PSS of every process of the cluster (the
driver listed, not counted: "an idle cluster" is what runs besides the user's program) and
their total. PSS divides shared pages among the processes sharing them, so forks of the
fork server count their own pages only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

ROUND = r"""
import json, sys, time
start = time.perf_counter()
import ember
import psutil

@ember.remote
def one() -> int:
    return 1

ember.init(include_dashboard=DASHBOARD)
ember.get(one.remote())
first = time.perf_counter() - start
time.sleep(IDLE)
rows = []
for proc in psutil.Process().children(recursive=True):
    try:
        rows.append((" ".join(proc.cmdline()[1:3]), proc.memory_full_info().pss))
    except psutil.Error:
        pass
driver = psutil.Process().memory_full_info().pss
ember.shutdown()
print(json.dumps({"first": first, "rows": rows, "driver": driver}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=14.0, help="seconds idle before measuring")
    parser.add_argument("--no-dashboard", action="store_true", help="init(include_dashboard=False)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    code = ROUND.replace("DASHBOARD", str(not args.no_dashboard)).replace("IDLE", str(args.idle))
    mib = 2 ** 20
    for number in range(args.rounds):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        print(f"round {number + 1}: import to first result {result['first']:.3f} s")
        for name, pss in result["rows"]:
            print(f"  {pss / mib:6.1f} MiB  {name}")
        total = sum(pss for _, pss in result["rows"])
        print(f"  {total / mib:6.1f} MiB  idle cluster (driver: {result['driver'] / mib:.1f} MiB, not counted)")


if __name__ == "__main__":
    main()
