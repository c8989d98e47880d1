"""Entry point of a worker process (started by the node daemon)."""

from __future__ import annotations

import logging
import os
import sys


def main() -> None:
    from ember._private import runtime
    from ember._private.processes import set_parent_death_signal
    from ember.core.worker import WORKER, CoreWorker

    set_parent_death_signal()
    from ember._private.collector import raise_young_threshold
    from ember._private.processes import raise_oom_score

    raise_young_threshold()

    raise_oom_score()
    if os.getppid() != int(os.environ.get("EMBER_RAYLET_PID", os.getppid())):
        os._exit(1)  # the node daemon died before we could ask to die with it
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, os.environ.get("EMBER_LOG_LEVEL", "WARNING").upper(), logging.WARNING),
        format=f"%(asctime)s %(levelname)s worker pid={os.getpid()} %(name)s: %(message)s",
    )
    from ember._private.config import config

    sys.setswitchinterval(config().worker_switch_interval_s)
    env = os.environ
    _run_setup_hook(env)
    worker = CoreWorker(
        WORKER,
        gcs_address=env["EMBER_GCS_ADDRESS"],
        raylet_address=env["EMBER_RAYLET_ADDRESS"],
        token=env.pop("EMBER_TOKEN"),
        node_ip=env.get("EMBER_NODE_IP", "127.0.0.1"),
        worker_id=bytes.fromhex(env["EMBER_WORKER_ID"]),
    )
    runtime.set_core_worker(worker)
    try:
        worker.start()
    except Exception as exc:
        print(f"worker failed to start: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    assert worker.executor is not None
    worker.executor.run_forever()
    os._exit(0)


def _run_setup_hook(env: os._Environ[str]) -> None:
    """The runtime env's worker_process_setup_hook, before this worker registers (a failure ends it)."""
    import json

    hook = json.loads(env.get("EMBER_RUNTIME_ENV") or "{}").get("worker_process_setup_hook")
    if not hook:
        return
    from ember.rpc.sync_client import gcs_request
    from ember.runtime_env.setup_hook import run_hook

    try:
        run_hook(hook, lambda method, payload: gcs_request(env["EMBER_GCS_ADDRESS"], env["EMBER_TOKEN"], method, payload))
    except BaseException:
        import traceback

        print(f"worker_process_setup_hook {hook} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        os._exit(1)


if __name__ == "__main__":
    main()
