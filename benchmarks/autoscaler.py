"""Autoscaler figures: seconds from demand to a new node running it, and the autoscaler's idle cost.

    python3 benchmarks/autoscaler.py [--repeat 3]

``ember up`` of a cluster whose head has no CPU and whose one worker type has 1 CPU
(fake_multinode provider, idle_timeout 0.05 min), in a temporary folder. Each round, a
driver submits one 1-CPU task that records ``time.time()`` when it starts; the figure is
the time from ``.remote()`` to that moment (the autoscaler notices the demand, the
provider starts a node daemon, it joins, the queued request is spilled to it, a worker
runs the task). Between rounds the node is removed (idle timeout). Then the autoscaler's
PSS (``/proc/<pid>/smaps_rollup``) after 10 s with nothing to do. Prints medians.
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

import yaml

CONFIG = {
    "cluster_name": "bench",
    "max_workers": 1,
    "idle_timeout_minutes": 0.05,
    "provider": {"type": "fake_multinode"},
    "head_node_type": "head",
    "available_node_types": {"head": {"resources": {"CPU": 0}}, "cpu": {"resources": {"CPU": 1}, "max_workers": 1}},
}


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="ember-autoscaler-bench-")
    env = {**os.environ, "EMBER_TMPDIR": tmp}
    path = os.path.join(tmp, "cluster.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(CONFIG, f)
    cli = [sys.executable, "-m", "ember.cli"]
    subprocess.run([*cli, "up", path, "--port", "0", "--no-include-dashboard"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    try:
        with open(os.path.join(tmp, "autoscaler", "bench.json")) as f:
            record = json.load(f)
        os.environ["EMBER_TMPDIR"] = tmp
        import ember
        from ember._private import session
        from ember.rpc.sync_client import gcs_request

        token = session.read_token(record["session_dir"])
        ember.init(address=record["gcs_address"], _token=token)

        @ember.remote(num_cpus=1)
        def started() -> float:
            return time.time()

        def workers() -> int:
            return sum(1 for n in gcs_request(record["gcs_address"], token, "get_nodes") if n["Alive"] and not n["IsHead"])

        delays = []
        for _ in range(args.repeat):
            while workers():  # wait for the idle node to go: each round starts from no worker node
                time.sleep(0.2)
            t0 = time.time()
            delays.append(ember.get(started.remote(), timeout=120) - t0)
            print(f"demand -> task running on a new node: {delays[-1]:.2f}s", flush=True)
        ember.shutdown()
        while workers():
            time.sleep(0.2)
        pid = session.read_pid_files(record["session_dir"])["autoscaler"]
        time.sleep(10)  # idle: nothing to launch or remove
        print(f"median demand -> running: {statistics.median(delays):.2f}s over {len(delays)} rounds")
        print(f"autoscaler process PSS when idle: {pss_kib(pid) / 1024:.1f} MiB")
    finally:
        subprocess.run([*cli, "down", path], env=env, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
