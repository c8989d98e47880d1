"""What metrics and task events cost on "tasks async" (submit 1000 no-op tasks, get them; repeat).

    python3 benchmarks/observability_overhead.py [--rounds 3] [--seconds 3] [--variants events-off,events-on]
    python3 benchmarks/observability_overhead.py --in-place [--calibrate] --rounds 20 --seconds 1.5

Variants, alternated in one run (in reverse order every other round) so a shared machine's noise falls on all:

* ``metrics-off``: ``EMBER_enable_metrics_collection=0`` (no task counts, no records);
* ``default``: everything on as shipped (task counts for ``ray_tasks``, task events);
* ``counter``: the default, and every task also increments a ``Counter`` with one tag;
* ``events-off``: ``EMBER_task_events_enabled=0`` (no task events; metrics as shipped);
* ``events-on``: ``EMBER_task_events_enabled=1`` (the default; the pair's other half).

Each round starts a fresh ``init(num_cpus=2)`` cluster per variant. Printed per
variant: median tasks/s, and the median CPU seconds per 1000 tasks of the driver plus
every process under it (steadier than throughput on a loaded machine); then the ratios
``metrics: default/metrics-off`` and ``events: events-on/events-off`` of both figures
when both halves ran (of the medians, and the median of each round's own ratio); then
the median CPU microseconds per task of each kind of process (driver, control service,
node daemon, workers) per variant: where a cost lands.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import psutil

import ember
from ember._private.config import reset_config
from ember.util.metrics import Counter

#: Per variant: the environment it sets (every variant sets both knobs).
VARIANTS: dict[str, dict[str, str]] = {
    "metrics-off": {"EMBER_enable_metrics_collection": "0", "EMBER_task_events_enabled": "1"},
    "default": {"EMBER_enable_metrics_collection": "1", "EMBER_task_events_enabled": "1"},
    "counter": {"EMBER_enable_metrics_collection": "1", "EMBER_task_events_enabled": "1"},
    "events-off": {"EMBER_enable_metrics_collection": "1", "EMBER_task_events_enabled": "0"},
    "events-on": {"EMBER_enable_metrics_collection": "1", "EMBER_task_events_enabled": "1"},
}
#: Ratios printed when both variants ran: (name, numerator, denominator).
PAIRS = (("metrics", "default", "metrics-off"), ("events", "events-on", "events-off"),
         ("noise", "events-off-again", "events-off"))


@ember.remote
def noop() -> None:
    return None


@ember.remote
def counted() -> None:
    Counter("bench_tasks", tag_keys=("kind",)).inc(tags={"kind": "noop"})


def _role(proc: psutil.Process, driver: int) -> str:
    """driver, gcs, raylet or workers (forks of the fork server share its command line)."""
    if proc.pid == driver:
        return "driver"
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return "workers"
    for role in ("gcs", "raylet"):
        if cmdline.endswith(f"ember.{role}") or f"-m ember.{role} " in cmdline:
            return role
    return "workers"


def _cpu(procs: list[psutil.Process]) -> dict[str, float]:
    """CPU seconds so far per role (and ``total``)."""
    driver = psutil.Process().pid
    totals = {"total": 0.0}
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        role = _role(proc, driver)
        totals[role] = totals.get(role, 0.0) + times.user + times.system
        totals["total"] += times.user + times.system
    return totals


#: Per variant, per round: microseconds of CPU per task of each role.
BY_ROLE: dict[str, list[dict[str, float]]] = {}


def _measure(variant: str, fn: Any, seconds: float) -> tuple[float, float]:
    """Run 1000 tasks of ``fn`` at a time for ``seconds``: tasks/s and CPU seconds per 1000 tasks
    of the driver and every process under it (each role's share goes to ``BY_ROLE``)."""
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    done, cpu0, start = 0, _cpu(procs), time.perf_counter()
    while time.perf_counter() - start < seconds:
        ember.get([fn.remote() for _ in range(1000)])
        done += 1000
    elapsed, cpu1 = time.perf_counter() - start, _cpu(procs)
    BY_ROLE.setdefault(variant, []).append({role: 1e6 * (cpu1[role] - cpu0.get(role, 0.0)) / done for role in cpu1})
    return done / elapsed, 1000 * (cpu1["total"] - cpu0["total"]) / done


def run_variant(variant: str, seconds: float) -> tuple[float, float]:
    os.environ.update(VARIANTS[variant])
    reset_config()
    ember.init(num_cpus=2, include_dashboard=False)
    try:
        fn = counted if variant == "counter" else noop
        ember.get([fn.remote() for _ in range(2000)])  # warm up: workers started, functions exported
        return _measure(variant, fn, seconds)
    finally:
        ember.shutdown()


@ember.remote
def _record_events(on: bool) -> int:
    from ember._private import runtime

    runtime.core_worker().task_events.enabled = on
    return os.getpid()


def _set_recording(on: bool) -> None:
    """Task events on or off in this driver and in the workers its tasks run on (a burst of
    tasks reaches every worker the driver holds a lease on; idle ones run nothing anyway)."""
    from ember._private import runtime

    runtime.core_worker().task_events.enabled = on
    ember.get([_record_events.remote(on) for _ in range(2000)])


def _in_turn(variants: list[str], round_index: int) -> list[str]:
    """The variants in the order of this round: reversed every other round, so that a trend
    within rounds (a machine warming up, a neighbour's job) falls on all of them alike."""
    return variants if round_index % 2 == 0 else variants[::-1]


def run_in_place(rounds: int, seconds: float, calibrate: bool) -> None:
    """One cluster; task events switched off and on in every process in turn, ``rounds`` times.

    Less noise than a fresh cluster per variant: the same processes, warm, seconds apart.
    ``calibrate``: also a second events-off each round (``events-off-again``), whose
    ratio to the first shows what noise alone does to the pair.
    """
    results: dict[str, list[tuple[float, float]]] = {"events-off": [], "events-on": []}
    if calibrate:
        results["events-off-again"] = []
    ember.init(num_cpus=2, include_dashboard=False)
    try:
        ember.get([noop.remote() for _ in range(2000)])
        for i in range(rounds):
            for variant in _in_turn(list(results), i):
                _set_recording(variant == "events-on")
                results[variant].append(_measure(variant, noop, seconds))
    finally:
        ember.shutdown()
    report(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--in-place", action="store_true",
                        help="events-off/events-on only, in one cluster: recording switched in every process")
    parser.add_argument("--calibrate", action="store_true",
                        help="with --in-place: also an events-off-again each round (the noise floor)")
    args = parser.parse_args()
    if args.in_place:
        run_in_place(args.rounds, args.seconds, args.calibrate)
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for i in range(args.rounds):
        for variant in _in_turn(variants, i):
            results[variant].append(run_variant(variant, args.seconds))
    report(results)


def _spread(values: list[float]) -> str:
    """Median and interquartile range."""
    if len(values) < 4:
        return f"{statistics.median(values):.3f}"
    q1, median, q3 = statistics.quantiles(values, n=4)
    return f"{median:.3f} (middle half {q1:.3f}-{q3:.3f})"


def report(results: dict[str, list[tuple[float, float]]]) -> None:
    """Medians per variant, the pairs' ratios, and CPU per task by kind of process."""
    variants = list(results)
    medians: dict[str, tuple[float, float]] = {}
    for variant in variants:
        rates = [r for r, _ in results[variant]]
        cpus = [c for _, c in results[variant]]
        medians[variant] = (statistics.median(rates), statistics.median(cpus))
        print(f"{variant:12s} {medians[variant][0]:8.0f} tasks/s   {medians[variant][1]:6.3f} CPU s per 1000 tasks"
              f"   (rounds: {', '.join(f'{r:.0f}' for r in rates)}; CPU: {', '.join(f'{c:.3f}' for c in cpus)})")
    for name, top, bottom in PAIRS:
        if top in medians and bottom in medians:
            # Also the median of each round's own ratio: the two ran seconds apart, so a shared
            # machine's slow and fast spells fall on both halves of a pair.
            pairs = list(zip(results[top], results[bottom]))
            rates = [t[0] / b[0] for t, b in pairs]
            cpus = [t[1] / b[1] for t, b in pairs]
            print(f"{name}: {top}/{bottom} throughput {medians[top][0] / medians[bottom][0]:.3f}, "
                  f"CPU per task {medians[top][1] / medians[bottom][1]:.3f} (ratios of the medians); "
                  f"the rounds' ratios: throughput {_spread(rates)}, CPU per task {_spread(cpus)}")
    roles = ("driver", "gcs", "raylet", "workers")
    print("median CPU µs per task by process: " + "  ".join(
        f"{variant}: " + ", ".join(
            f"{role} {statistics.median(r.get(role, 0.0) for r in BY_ROLE[variant]):.1f}" for role in roles)
        for variant in variants))


if __name__ == "__main__":
    main()
