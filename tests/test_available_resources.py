"""``available_resources()`` lists what is free at every moment, 0 included.

A busy node used to drop out of the sum: a resource with nothing free was
left out, so ``available_resources()["CPU"]`` raised ``KeyError`` right after a
burst of calls. Node daemons also report a change within
``resource_report_min_interval_s`` instead of at the next period.
"""

from __future__ import annotations

import threading

import ember
from ember._private.test_utils import wait_for_condition


@ember.remote(num_cpus=1)
class Holder:
    def ping(self) -> int:
        return 1


@ember.remote(num_cpus=0)
class Free:
    def ping(self) -> int:
        return 1


@ember.remote
def busy(x: int) -> int:
    import time

    end = time.monotonic() + 0.02  # some work, so that both CPUs are held for a while
    while time.monotonic() < end:
        pass
    return x


def test_every_resource_is_listed_while_everything_is_in_use(ember_local):
    holders = [Holder.remote() for _ in range(2)]
    assert ember.get([h.ping.remote() for h in holders]) == [1, 1]
    wait_for_condition(lambda: ember.available_resources().get("CPU") == 0.0, timeout=10)
    available = ember.available_resources()
    assert set(ember.cluster_resources()) <= set(available)
    for h in holders:
        ember.kill(h)
    wait_for_condition(lambda: ember.available_resources()["CPU"] == 2.0, timeout=10)


def test_the_cpu_key_is_there_during_and_after_bursts_of_calls(ember_local):
    samples: list[dict[str, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(ember.available_resources())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        actors = [Free.remote() for _ in range(4)]
        for _ in range(5):
            assert sum(ember.get([a.ping.remote() for a in actors for _ in range(25)])) == 100
            assert ember.get([busy.remote(i) for i in range(20)]) == list(range(20))
        samples.append(ember.available_resources())  # right after the last burst
    finally:
        stop.set()
        sampler.join(timeout=30)
    assert len(samples) > 5
    missing = [s for s in samples if "CPU" not in s]
    assert not missing, f"{len(missing)} of {len(samples)} samples lack CPU: {missing[:3]}"
    assert all(0.0 <= s["CPU"] <= 2.0 for s in samples)
