"""Fault injection for tests, in the spirit of Ray's ``RAY_testing_rpc_failure``.

``EMBER_testing_rpc_failure`` lists methods with the chance that a request
is lost on its way, the chance that its reply is lost on the way back, and
the largest extra delay in milliseconds::

    EMBER_testing_rpc_failure="push_task=0.1:0.1:20,request_lease=0.2:0:50,*=0:0:5"

``*`` applies to every method not named. ``EMBER_testing_rpc_seed`` makes
the choices reproducible. A lost request or reply is resent by the caller
after a short pause, as a real client would after a timeout, so servers see
real duplicates; the handlers that matter are idempotent.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    request_loss: float
    reply_loss: float
    max_delay_ms: float


def parse(spec: str) -> dict[str, Fault]:
    faults: dict[str, Fault] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        method, _, numbers = item.partition("=")
        parts = numbers.split(":")
        if not method or len(parts) != 3:
            raise ValueError(
                f"bad EMBER_testing_rpc_failure entry {item!r}: expected method=request_loss:reply_loss:max_delay_ms"
            )
        request_loss, reply_loss, delay = (float(p) for p in parts)
        if not (0 <= request_loss < 1 and 0 <= reply_loss < 1 and delay >= 0):
            raise ValueError(f"bad EMBER_testing_rpc_failure entry {item!r}: losses must be in [0, 1), delay >= 0")
        faults[method] = Fault(request_loss, reply_loss, delay)
    return faults


_faults = parse(os.environ.get("EMBER_testing_rpc_failure", ""))
rng = random.Random(int(os.environ.get("EMBER_testing_rpc_seed", "0") or 0) ^ os.getpid())


def fault_for(method: str) -> Fault | None:
    if not _faults:
        return None
    return _faults.get(method) or _faults.get("*")
