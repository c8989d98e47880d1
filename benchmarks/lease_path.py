"""CPU time the node daemon spends on one lease: request -> grant -> return, in-process.

The daemon is built as in ``tests/test_unit_raylet_services.py`` (a launcher that starts
no process, connections that only record): no socket, no other process, so the figure is
the daemon's own Python work per lease, free of the machine's noise that end-to-end
microbenchmarks suffer from. The event loop turns between requests, as in the daemon.

    PYTHONPATH=<tree>/src python3 benchmarks/lease_path.py [--leases N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import tempfile
import time
from typing import Any

_pids = itertools.count(200000)


class _Proc:
    def __init__(self) -> None:
        self.pid = next(_pids)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9

    terminate = kill

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


class _Launcher:
    ready, dead = True, False

    def launch(self, *args: Any, **kwargs: Any) -> _Proc:
        return _Proc()

    def read_available(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _Conn:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.closed = False

    def notify(self, method: str, payload: Any) -> None:
        pass

    def add_close_callback(self, callback: Any) -> None:
        pass


async def measure(leases: int, rounds: int) -> float:
    import msgspec

    from ember.protocol.raylet import RegisterWorker, RequestLease, ReturnLease
    from ember.raylet.server import Raylet, RayletOptions

    tmp = tempfile.mkdtemp(prefix="ember-lease-bench-")
    try:
        opts = RayletOptions(session_dir=tmp, gcs_address="127.0.0.1:1", resources={"CPU": 4},
                             store_capacity=1 << 20, store_dir=os.path.join(tmp, "store"), node_id=b"n" * 28)
        raylet = Raylet(opts, "token")
        raylet.pool.launcher = _Launcher()
        raylet.node.address = ["127.0.0.1", 1]
        handlers: Any = raylet.handlers
        for _ in range(4):
            worker = raylet.pool.start_worker()
            handlers.rpc_register_worker(_Conn(), msgspec.convert(
                {"worker_id": worker.worker_id, "address": ["127.0.0.1", worker.pid, worker.worker_id]}, RegisterWorker))
        holder = _Conn()
        best = float("inf")
        for round_index in range(rounds):
            start = time.process_time()
            for i in range(leases):
                reply = handlers.rpc_request_lease(holder, RequestLease(request_id=round_index * leases + i,
                                                                         resources={"CPU": 1.0}))
                grant = reply.result()
                lease_id = grant["lease_id"] if isinstance(grant, dict) else grant.lease_id
                handlers.rpc_return_lease(holder, ReturnLease(lease_id=lease_id))
                await asyncio.sleep(0)
            best = min(best, (time.process_time() - start) / leases)
        raylet.table.validate()
        await raylet.stop()
        return best
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    per_lease = asyncio.run(measure(args.leases, args.rounds))
    print(f"node daemon CPU per lease request+grant+return: {per_lease * 1e6:.1f} us (best of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
