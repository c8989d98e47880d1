"""The chaos battery, long profile: ten minutes of worker and node kills under load.

    python benchmarks/chaos.py                     # long profile, seed 0
    python benchmarks/chaos.py --seed 3 --duration 120
    python benchmarks/chaos.py --profile short     # what CI runs (tests/test_chaos.py)

Prints one JSON report (tasks and calls run, kills, values checked, anything
lost or left behind) and exits non-zero if anything was lost or left behind.
See ``ember.bench.chaos`` for what runs and what is checked.
"""

from __future__ import annotations

import argparse
import json
import sys

from ember.bench import chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="long", choices=sorted(chaos.PROFILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=None, help="seconds of chaos (default: the profile's)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    report = chaos.run(args.profile, args.seed, duration_s=args.duration, verbose=not args.quiet)
    print(json.dumps(report, indent=2))
    ok = not any(report[k] for k in ("lost", "wrong", "errors", "undelivered", "out_of_order", "leftover_store_bytes",
                                     "leftover_spill_files", "resources_not_returned", "orphans"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
