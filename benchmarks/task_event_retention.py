"""What the control service's task-event store costs as tasks accumulate.

    python3 benchmarks/task_event_retention.py [--tasks 100000] [--batch 5000]

Runs TASKS no-op tasks on a fresh ``init(num_cpus=2)`` cluster in batches, waits until the
store has recorded every one as FINISHED (``summarize_tasks``), and prints after each
quarter: tasks recorded, the control service's PSS, and the seconds a filtered
``list_tasks(filters=[("state", "=", "RUNNING")])`` and a ``summarize_tasks`` take. The
store keeps at most ``task_events_max_tasks_per_job`` tasks per job (default 100,000):
past that the oldest finished ones are dropped, counted, so the memory stays bounded.
"""

from __future__ import annotations

import argparse
import time

import psutil

import ember
from ember._private.config import config
from ember._private.test_utils import wait_for_condition
from ember.util.state import list_tasks, summarize_tasks


@ember.remote
def noop() -> None:
    return None


def _gcs() -> psutil.Process:
    return next(p for p in psutil.Process().children() if "ember.gcs" in " ".join(p.cmdline()))


def _finished() -> int:
    summary = summarize_tasks(raise_on_missing_output=False)["cluster"]["summary"]
    return sum(entry["state_counts"].get("FINISHED", 0) for entry in summary.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    ember.init(num_cpus=2, include_dashboard=False)
    try:
        gcs = _gcs()
        mib = 2 ** 20
        print(f"{'tasks':>8} {'GCS PSS MiB':>12} {'list RUNNING s':>15} {'summarize s':>12}")
        print(f"{0:>8} {gcs.memory_full_info().pss / mib:>12.1f}")
        done, quarter = 0, max(args.tasks // 4, 1)
        while done < args.tasks:
            n = min(args.batch, args.tasks - done)
            ember.get([noop.remote() for _ in range(n)])
            done += n
            if done % quarter and done < args.tasks:
                continue
            kept = min(done, config().task_events_max_tasks_per_job)  # beyond, the oldest are dropped
            wait_for_condition(lambda target=kept: _finished() >= target, timeout=120, retry_interval_ms=500)
            start = time.perf_counter()
            running = list_tasks(filters=[("state", "=", "RUNNING")], raise_on_missing_output=False)
            listed = time.perf_counter() - start
            start = time.perf_counter()
            summarize_tasks(raise_on_missing_output=False)
            summarized = time.perf_counter() - start
            print(f"{done:>8} {gcs.memory_full_info().pss / mib:>12.1f} {listed:>15.3f} {summarized:>12.3f}"
                  f"   ({len(running)} running)")
    finally:
        ember.shutdown()


if __name__ == "__main__":
    main()
