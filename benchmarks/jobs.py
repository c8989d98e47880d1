"""Job API latency, Ember vs Ray: seconds from ``submit_job`` to a final status.

    python3 benchmarks/jobs.py [--repeat 5] [--no-ray]

Two entrypoints: ``true`` (the job machinery alone) and a Python driver that connects to
the cluster and runs one task. Ember: an ``ember start --head`` cluster (2 CPUs) in a
temporary folder, its HTTP server found from the session; Ray: ``ray.init(num_cpus=2,
include_dashboard=True)`` in ``/work/rayenv`` (a subprocess). Each submits with its own
``JobSubmissionClient`` and polls ``get_job_status`` every 10 ms. Prints medians.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

RAY_PYTHON = "/work/rayenv/bin/python"

#: Runs in either runtime's interpreter: ``python - <module> <url> <repeat> [headers-json]``.
MEASURE = r"""
import json, statistics, sys, time
module, url, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
headers = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
sdk = __import__(module + ".job_submission", fromlist=["JobSubmissionClient"])
client = sdk.JobSubmissionClient(url, headers=headers)

def once(entrypoint):
    start = time.perf_counter()
    job = client.submit_job(entrypoint=entrypoint)
    while not client.get_job_status(job).is_terminal():
        time.sleep(0.01)
    assert str(client.get_job_status(job)).endswith("SUCCEEDED"), client.get_job_logs(job)
    return time.perf_counter() - start

once("true")  # warm-up
driver = f"{sys.executable} -c 'import {module}; {module}.init(); {module}.get({module}.remote(lambda: 1).remote())'"
print(json.dumps({
    "true": statistics.median(once("true") for _ in range(repeat)),
    "python driver + 1 task": statistics.median(once(driver) for _ in range(repeat)),
}))
"""

RAY_CLUSTER = r"""
import subprocess, sys, ray
ray.init(num_cpus=2, include_dashboard=True, dashboard_port=int(sys.argv[1]))
done = subprocess.run([sys.executable, "-c", sys.argv[2], "ray", "http://127.0.0.1:" + sys.argv[1], sys.argv[3]],
                      capture_output=True, text=True)
ray.shutdown()
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr[-2000:])
"""


def measure_ember(repeat: int) -> dict[str, float]:
    from ember._private import session
    from ember._private.test_utils import free_port, wait_for_condition

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EMBER_TMPDIR": tmp}
        for key in ("EMBER_ADDRESS", "RAY_ADDRESS", "EMBER_CLUSTER_TOKEN"):
            env.pop(key, None)
        ember = [sys.executable, "-m", "ember.cli"]
        subprocess.run([*ember, "start", "--head", "--port", str(free_port()), "--num-cpus", "2"],
                       env=env, check=True, capture_output=True)
        try:
            info = json.load(open(os.path.join(tmp, "ember_current_cluster")))
            wait_for_condition(lambda: session.dashboard_url(info["session_dir"]) is not None, timeout=30)
            url = "http://" + str(session.dashboard_url(info["session_dir"]))
            headers = json.dumps({"Authorization": "Bearer " + session.read_token(info["session_dir"])})
            done = subprocess.run([sys.executable, "-c", MEASURE, "ember", url, str(repeat), headers],
                                  env=env, capture_output=True, text=True, check=True)
        finally:
            subprocess.run([*ember, "stop"], env=env, capture_output=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_ray(repeat: int) -> dict[str, float]:
    from ember._private.test_utils import free_port

    done = subprocess.run([RAY_PYTHON, "-c", RAY_CLUSTER, str(free_port()), MEASURE, str(repeat)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    ember = measure_ember(args.repeat)
    ray = None if args.no_ray or not os.path.exists(RAY_PYTHON) else measure_ray(args.repeat)
    print(f"{'submit -> SUCCEEDED (median s)':34} {'Ember':>8} {'Ray':>8} {'Ray/Ember':>10}")
    for name, seconds in ember.items():
        other = ray.get(name) if ray else None
        ratio = f"{other / seconds:10.1f}" if other else f"{'-':>10}"
        print(f"{name:34} {seconds:8.3f} {other if other is not None else float('nan'):8.3f} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
