"""CPU time of one task push through the RPC layer, both ends, in-process and noise-resistant.

The worker's end: a ``Connection`` with a fake transport is fed ``push_task`` frames carrying a
realistic spec; it decodes them, dispatches to a handler that answers at once, and encodes
the replies. The submitter's end: ``call_future("push_task", spec)`` (encode and write), then
the reply frame is fed back and resolves the future. Process CPU time per push, so other load
on the machine matters less than for ``ember microbenchmark``.

Usage: ``python3 benchmarks/push_dispatch.py [--src A --src B ...] [--rounds 7] [--n 20000]``:
each ``--src`` (a tree's ``src`` folder; default: this one) runs in its own interpreter, the
trees alternating round by round; prints the median per push for each and the ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent / "src"


def _one_round(n: int) -> dict[str, float]:
    import asyncio
    import time

    from ember.protocol import Service
    from ember.rpc import framing
    from ember.rpc.connection import Connection
    from ember.rpc.framing import HELLO_MAGIC, REPLY, REQUEST

    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.written: list[bytes] = []

        def write(self, data: Any) -> None:
            self.written.append(bytes(data))

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return default

    reply = {"s": "ok", "r": [[0, [b"\x00" * 8, os.urandom(40), []], []]]}

    class Worker:
        protocol_service = Service.CORE_WORKER

        def rpc_push_task(self, conn: Any, spec: Any) -> Any:
            return reply

    tid = os.urandom(16)
    spec = {
        "tid": tid, "job": b"\x00\x00\x00\x01", "fid": os.urandom(20), "name": "small_value",
        "args": [[0, os.urandom(40)]], "kw": [], "nret": 1, "rids": [tid + b"\x00\x00\x00\x01"],
        "owner": ["127.0.0.1", 41234, os.urandom(16)], "res": {"CPU": 1.0}, "gpus": [], "attempt": 1,
    }
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # the worker's end
    server = Connection("token", Worker(), is_server=True)
    server_out = Transport()
    server.connection_made(server_out)
    server.data_received(framing.encode([HELLO_MAGIC, "token", {"role": "bench"}]))
    batch = 100
    frames = b"".join(framing.encode([REQUEST, i, "push_task", spec]) for i in range(batch))
    start = time.process_time()
    for _ in range(n // batch):
        server_out.written.clear()
        server.data_received(frames)
        server._flush()
    worker_us = (time.process_time() - start) / n * 1e6
    answers = [framing.decode_body(body) for chunk in server_out.written
               for body in framing.FrameDecoder(1 << 20).feed(chunk)]
    assert len(answers) == batch and all(a[0] == REPLY for a in answers), answers[:1]  # served, not refused
    # the submitter's end
    client = Connection("token", None, is_server=False)
    client_out = Transport()
    client.connection_made(client_out)
    client.data_received(framing.encode(["OK", {}]))
    start = time.process_time()
    for _ in range(n // batch):
        futures = [client.call_future("push_task", spec) for _ in range(batch)]
        client._flush()
        first = next(iter(client._pending))
        client.data_received(b"".join(framing.encode([REPLY, first + i, reply]) for i in range(batch)))
        assert all(f.done() for f in futures)
    submitter_us = (time.process_time() - start) / n * 1e6
    loop.close()
    return {"worker": worker_us, "submitter": submitter_us}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", action="append", help="a tree's src folder (repeatable)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps(_one_round(opts.n)))
        return
    trees = opts.src or [str(HERE)]
    results: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for r in range(opts.rounds):
        for tree in trees if r % 2 == 0 else list(reversed(trees)):
            out = subprocess.run([sys.executable, __file__, "--child", "--n", str(opts.n)], check=True,
                                 env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True).stdout
            results[tree].append(json.loads(out))
    first = trees[0]
    print(f"{'tree':40} {'worker us':>10} {'submitter us':>13} {'total us':>9} {'vs first':>9}")
    base = statistics.median(r["worker"] + r["submitter"] for r in results[first])
    for tree, rows in results.items():
        worker = statistics.median(r["worker"] for r in rows)
        submitter = statistics.median(r["submitter"] for r in rows)
        total = statistics.median(r["worker"] + r["submitter"] for r in rows)
        print(f"{tree[-40:]:40} {worker:10.2f} {submitter:13.2f} {total:9.2f} {total / base:8.2f}x")


if __name__ == "__main__":
    main()
