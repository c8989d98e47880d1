"""Ember vs Ray on Ray's core microbenchmarks, side by side in one run.

    python3 benchmarks/compare_with_ray.py [--filter X] [--duration 2] [--repeat 1]

Each workload runs in a fresh cluster of each runtime (``init(num_cpus=2)``,
same duration), Ember then Ray, one subprocess each
(``benchmarks/run_workloads.py``; Ray from ``/work/rayenv/bin/python``).
Alternating per workload, rather than running one whole suite and then the
other, spreads the noise of a shared machine over both. ``--repeat N`` does
the alternation N times and pools the rounds. "init to first task result"
(seconds from ``import`` in a fresh interpreter to the first task result)
alternates the same way.

The table's ratio is Ember/Ray throughput, so > 1 means Ember is faster; for
the init row it is Ray's seconds over Ember's (> 1: Ember starts faster).

Ray runs in an interpreter of its own, never the one Ember runs in. Point the
script at it with ``--ray-python PATH`` or ``EMBER_RAY_PYTHON=PATH``
(default: ``/work/rayenv/bin/python``); to make one::

    python3 -m venv ~/rayenv && ~/rayenv/bin/pip install ray
    python3 benchmarks/compare_with_ray.py --ray-python ~/rayenv/bin/python

Without a usable Ray the script says so in one line and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run_workloads import DEFAULT_DEFINITIONS, load_definitions  # noqa: E402

RAY_PYTHON = os.environ.get("EMBER_RAY_PYTHON", "/work/rayenv/bin/python")


def ray_problem(python: str) -> str | None:
    """Why ``python`` cannot run the Ray side (None: it can)."""
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        return f"no Python interpreter at {python}"
    try:
        proc = subprocess.run([python, "-c", "import ray"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} did not run: {exc}"
    if proc.returncode != 0:
        return f"{python} cannot import ray"
    return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("EMBER_ADDRESS", "RAY_ADDRESS"):
        env.pop(var, None)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def run_one(runtime: str, python: str, name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """One workload in a fresh cluster of ``runtime``; its result dict, or None if it failed."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    cmd = [python, os.path.join(HERE, "run_workloads.py"), "--runtime", runtime,
           "--names", json.dumps([name]), "--duration", str(args.duration),
           "--num-cpus", str(args.num_cpus), "--settle", str(args.settle),
           "--definitions", args.definitions, "--out", out]
    try:
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=args.timeout)
        for line in proc.stdout.splitlines():
            print(f"  [{runtime}] {line}", flush=True)
        if proc.returncode != 0:
            print(f"  [{runtime}] FAILED (exit code {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
            return None
        with open(out) as f:
            data = json.load(f)
        return data["results"][0] if data["results"] else None
    except subprocess.TimeoutExpired:
        print(f"  [{runtime}] FAILED: no result within {args.timeout}s", flush=True)
        return None
    finally:
        os.unlink(out)


def pooled(results: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Mean and std over every timed round of every repetition."""
    rates = [r for res in results for r in res.get("rates", [res["mean"]])]
    if not rates:
        return None
    return statistics.fmean(rates), statistics.pstdev(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description="Ember vs Ray microbenchmarks, side by side.")
    parser.add_argument("--filter", default=None, help="Only benchmarks whose name contains this.")
    parser.add_argument("--duration", type=float, default=2.0, help="Timed seconds per workload and run.")
    parser.add_argument("--repeat", type=int, default=1, help="Ember/Ray alternations per workload.")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--settle", type=float, default=2.0, help="Seconds each cluster idles after init.")
    parser.add_argument("--cooldown", type=float, default=1.0,
                        help="Seconds between runs, for the previous cluster's processes to exit.")
    parser.add_argument("--init-runs", type=int, default=3, help="Alternations for 'init to first task result'.")
    parser.add_argument("--ray-python", default=RAY_PYTHON,
                        help="An interpreter with Ray installed (default: $EMBER_RAY_PYTHON or %(default)s).")
    parser.add_argument("--definitions", default=os.path.abspath(DEFAULT_DEFINITIONS))
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds before one run is given up.")
    parser.add_argument("--json", default=None, help="Also write the table as JSON to this file.")
    args = parser.parse_args()
    problem = ray_problem(args.ray_python)
    if problem is not None:
        sys.exit(f"compare_with_ray: Ray is needed for the comparison but {problem}; install Ray in a "
                 "virtualenv (python3 -m venv ~/rayenv && ~/rayenv/bin/pip install ray) and pass "
                 "--ray-python ~/rayenv/bin/python (or set EMBER_RAY_PYTHON). `ember microbenchmark` "
                 "runs the Ember side alone.")

    defs = load_definitions(args.definitions)
    runtimes = [("ember", sys.executable), ("ray", args.ray_python)]
    started = time.time()
    rows: list[dict[str, Any]] = []

    if defs.selected(defs.INIT_TO_FIRST_RESULT, args.filter):
        print(f"== {defs.INIT_TO_FIRST_RESULT}", flush=True)
        times: dict[str, list[float]] = {"ember": [], "ray": []}
        for _ in range(args.init_runs):
            for runtime, python in runtimes:
                time.sleep(args.cooldown)
                try:
                    times[runtime].append(defs._init_once(runtime, args.num_cpus, python))
                except Exception as exc:
                    print(f"  [{runtime}] FAILED: {exc}", flush=True)
                else:
                    print(f"  [{runtime}] {times[runtime][-1]:.3f} s", flush=True)
        row: dict[str, Any] = {"name": defs.INIT_TO_FIRST_RESULT, "unit": "seconds"}
        for runtime in times:
            if times[runtime]:
                row[runtime] = (statistics.fmean(times[runtime]), statistics.pstdev(times[runtime]))
        rows.append(row)

    for name in defs.WORKLOAD_NAMES:
        if not defs.selected(name, args.filter):
            continue
        print(f"== {name}", flush=True)
        results: dict[str, list[dict[str, Any]]] = {"ember": [], "ray": []}
        for _ in range(args.repeat):
            for runtime, python in runtimes:
                time.sleep(args.cooldown)
                result = run_one(runtime, python, name, args)
                if result is not None:
                    results[runtime].append(result)
        row = {"name": name, "unit": "per second"}
        for runtime in results:
            stats = pooled(results[runtime])
            if stats is not None:
                row[runtime] = stats
        rows.append(row)

    print_table(rows, args, time.time() - started)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


def _ratio(row: dict[str, Any]) -> float | None:
    if "ember" not in row or "ray" not in row:
        return None
    ember, ray = row["ember"][0], row["ray"][0]
    if row["unit"] == "seconds":
        return ray / ember if ember else None
    return ember / ray if ray else None


def _fmt(stats: tuple[float, float] | None, unit: str) -> str:
    if stats is None:
        return "failed"
    mean, std = stats
    if unit == "seconds":
        return f"{mean:.3f} s ± {std:.3f}"
    return f"{mean:,.2f} ± {std:,.2f}" if mean < 100 else f"{mean:,.0f} ± {std:,.0f}"


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, elapsed: float) -> None:
    width = max([len(r["name"]) for r in rows] + [8])
    print()
    print(f"Ember vs Ray (num_cpus={args.num_cpus}, {args.duration:g} s per workload, "
          f"{args.repeat} alternation(s), {elapsed:.0f} s in all). Ratio: Ember/Ray throughput "
          "(init row: Ray s / Ember s); > 1 means Ember is faster.")
    header = f"| {'workload':<{width}} | {'Ember/s':>22} | {'Ray/s':>22} | {'ratio':>6} |"
    print(header)
    print("|" + "-" * (width + 2) + "|" + "-" * 23 + ":|" + "-" * 23 + ":|" + "-" * 7 + ":|")
    for row in rows:
        ratio = _ratio(row)
        ratio_text = f"{ratio:.2f}" if ratio is not None else "-"
        print(f"| {row['name']:<{width}} | {_fmt(row.get('ember'), row['unit']):>22} | "
              f"{_fmt(row.get('ray'), row['unit']):>22} | {ratio_text:>6} |")


if __name__ == "__main__":
    main()
