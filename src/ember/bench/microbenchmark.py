"""``ember microbenchmark``: Ray's core microbenchmarks, run against Ember.

The workloads are the task and object ones of Ray's ``ray microbenchmark``
(``ray/_private/ray_perf.py``), with Ray's names and semantics, so that the
numbers can be read next to Ray's. Measurement follows Ray's ``timeit``: a
warm-up that also sizes the step (``step = warm-up calls // 10 + 1``), then
four timed rounds; each line reports the mean and standard deviation of the
four per-round rates as ``<name> per second <mean> +- <std>``. Unlike Ray we
do not sleep ten seconds before each benchmark, and ``duration`` (the sum of
the four rounds) defaults to two seconds rather than eight.

Left out: the actor, placement-group and Ray Client workloads (this suite
was written for tasks and objects, before Ember had actors). "multi client
tasks async" uses actors as the clients in Ray; here the clients are tasks
that submit tasks (see ``_multi_client_tasks_async``), under both runtimes.

This file is also run under Ray, for side-by-side numbers
(``benchmarks/compare_with_ray.py`` loads it by path). So it imports only
the standard library at module level, and every workload takes the runtime
module (``ember`` or ``ray``) as a parameter: nothing in it may import
``ember`` except ``run_all``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

#: The one benchmark reported in seconds (lower is better) rather than per second.
INIT_TO_FIRST_RESULT = "init to first task result"

#: Measured on a two-node cluster of its own, in GB/s (higher is better).
CROSS_NODE_TRANSFER = "object transfer GB/s between two nodes"

#: Measured in a fresh interpreter so that the import is cold; ``{module}``
#: is ``ember`` or ``ray``. Prints the seconds from before the import to the
#: first task result (interpreter start-up and shutdown are not included).
_INIT_SCRIPT = """\
import time
start = time.perf_counter()
import {module} as ray
ray.init(address="local", num_cpus={num_cpus})

@ray.remote
def f():
    return 1

assert ray.get(f.remote()) == 1
elapsed = time.perf_counter() - start
print("EMBER_BENCH_INIT", elapsed, flush=True)
ray.shutdown()
"""

Fn = Callable[[], Any]


# ============================================================================ measuring
def timeit(name: str, fn: Fn, multiplier: float = 1, duration: float = 2.0) -> dict[str, Any]:
    """Ray's ``timeit`` with a configurable length: ``duration`` seconds over four rounds."""
    round_time = duration / 4
    warmup = min(1.0, max(round_time, 0.2))
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < warmup:
        fn()
        count += 1
    step = count // 10 + 1
    rates = []
    for _ in range(4):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < round_time:
            for _ in range(step):
                fn()
            count += step
        rates.append(multiplier * count / (time.perf_counter() - start))
    mean = statistics.fmean(rates)
    std = statistics.pstdev(rates)  # numpy's np.std, as Ray reports
    print(name, "per second", round(mean, 2), "+-", round(std, 2), flush=True)
    return {"name": name, "mean": mean, "std": std, "unit": "per second", "rates": rates}


def measure_init_to_first_result(module: str, num_cpus: int = 2, runs: int = 3,
                                 python: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Seconds from ``import <module>`` in a fresh interpreter to its first task result."""
    times = [_init_once(module, num_cpus, python or sys.executable) for _ in range(runs)]
    mean = statistics.fmean(times)
    std = statistics.pstdev(times)
    if not quiet:
        print(INIT_TO_FIRST_RESULT, round(mean, 3), "s +-", round(std, 3), flush=True)
    return {"name": INIT_TO_FIRST_RESULT, "mean": mean, "std": std, "unit": "seconds", "runs": times}


def measure_cross_node_transfer(ray: Any, np: Any, size: int = 1 << 30, runs: int = 3,
                                quiet: bool = False) -> dict[str, Any]:
    """GB/s of reading on node A (the driver's) a ``size``-byte numpy array produced on node B.

    Not one of Ray's microbenchmarks. It starts its own two-node cluster with
    the runtime's ``cluster_utils.Cluster`` (``ember.cluster_utils`` or
    ``ray.cluster_utils``, so it runs under both), on this machine: node B has
    a custom resource that the producing task asks for. Each run makes a fresh
    array on B, waits until it exists there without fetching it, then times
    ``get`` on A: the pull from B's store into A's, plus mapping it (numpy
    arrays are not copied again). ``ray`` must not be initialised.
    """
    import importlib

    cluster_utils = importlib.import_module(ray.__name__ + ".cluster_utils")
    store = 2 * size + 64 * 1024 * 1024
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store}
    )
    try:
        cluster.add_node(num_cpus=1, resources={"transfer_source": 1}, object_store_memory=store)
        cluster.wait_for_nodes()
        cluster.connect()

        @ray.remote(resources={"transfer_source": 1})
        def produce(n: int) -> Any:
            return np.ones(n, dtype=np.uint8)

        rates = []
        for _ in range(runs):
            ref = produce.remote(size)
            ray.wait([ref], fetch_local=False)
            start = time.perf_counter()
            value = ray.get(ref)
            elapsed = time.perf_counter() - start
            if value.nbytes != size:
                raise RuntimeError(f"read {value.nbytes} bytes, expected {size}")
            rates.append(size / elapsed / 1e9)
            del value, ref  # free both copies before the next run
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    mean = statistics.fmean(rates)
    std = statistics.pstdev(rates)
    if not quiet:
        print(CROSS_NODE_TRANSFER, round(mean, 2), "+-", round(std, 2), f"({size / 2**30:g} GiB object)", flush=True)
    return {"name": CROSS_NODE_TRANSFER, "mean": mean, "std": std, "unit": "GB/s", "rates": rates, "bytes": size}


def missing_bytecode_cache() -> str:
    """Why start-up is measured slower than an installed Ember starts ("" when it is not).

    Every daemon and worker imports Ember's modules; without their bytecode cache (an
    editable install where ``PYTHONDONTWRITEBYTECODE`` is set) each compiles them again.
    """
    import importlib.util

    import ember.core.worker as probe  # one module every process loads

    source = probe.__file__ or ""
    try:
        cached = os.path.exists(importlib.util.cache_from_source(source))
    except (NotImplementedError, ValueError):
        return ""
    if cached or not sys.flags.dont_write_bytecode:
        return ""
    package = os.path.dirname(os.path.dirname(source))
    return (
        "Ember's modules have no bytecode cache and PYTHONDONTWRITEBYTECODE is set, so every "
        f"process compiles them at start (init is ~0.3 s slower); `python3 -m compileall -q {package}` writes it"
    )


def _init_once(module: str, num_cpus: int, python: str) -> float:
    env = dict(os.environ)
    for var in ("EMBER_ADDRESS", "RAY_ADDRESS"):
        env.pop(var, None)
    script = _INIT_SCRIPT.format(module=module, num_cpus=num_cpus)
    proc = subprocess.run([python, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith("EMBER_BENCH_INIT "):
            return float(line.split()[1])
    raise RuntimeError(
        f"measuring {INIT_TO_FIRST_RESULT!r} with {module} failed (exit code {proc.returncode}):\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )


# ============================================================================ workloads
class _Remotes:
    """The remote functions every workload shares, defined against one runtime module.

    They are closures (defined inside ``__init__``), so both Ember and Ray
    pickle them by value and the workers never import this file.
    """

    def __init__(self, ray: Any) -> None:
        @ray.remote
        def small_value() -> bytes:
            return b"ok"

        # Ray's clients in "multi client tasks async" are actors declared with
        # num_cpus=0; these task clients use no CPU either, like them.
        @ray.remote(num_cpus=0)
        def small_value_batch(n: int) -> int:
            ray.get([small_value.remote() for _ in range(n)])
            return 0

        @ray.remote
        def create_object_containing_ref() -> list[Any]:
            return [ray.put(1) for _ in range(10000)]

        @ray.remote
        def do_put_small() -> None:
            for _ in range(100):
                ray.put(0)

        @ray.remote(num_cpus=0)
        class Actor:
            def small_value(self) -> bytes:
                return b"ok"

            def small_value_arg(self, x: Any) -> bytes:
                return b"ok"

            def small_value_batch(self, n: int) -> None:
                ray.get([small_value.remote() for _ in range(n)])

        @ray.remote
        class AsyncActor:
            async def small_value(self) -> bytes:
                return b"ok"

            async def small_value_with_arg(self, x: Any) -> bytes:
                return b"ok"

        @ray.remote(num_cpus=0)
        class Client:
            def __init__(self, servers: Any) -> None:
                self.servers = servers if isinstance(servers, list) else [servers]

            def small_value_batch(self, n: int) -> None:
                results = []
                for s in self.servers:
                    results.extend([s.small_value.remote() for _ in range(n)])
                ray.get(results)

            def small_value_batch_arg(self, n: int) -> None:
                x = ray.put(0)
                results = []
                for s in self.servers:
                    results.extend([s.small_value_arg.remote(x) for _ in range(n)])
                ray.get(results)

        @ray.remote
        def work(actors: Any, n: int) -> None:
            ray.get([actors[i % len(actors)].small_value.remote() for i in range(n)])

        # Actor classes as the runtime made them (mypy sees a class decorator's input only).
        self.Actor: Any = Actor
        self.AsyncActor: Any = AsyncActor
        self.Client: Any = Client
        self.work = work
        self.small_value = small_value
        self.small_value_batch = small_value_batch
        self.create_object_containing_ref = create_object_containing_ref
        self.do_put_small = do_put_small


def _get_calls(ray: Any, np: Any, r: _Remotes) -> Fn:
    value = ray.put(0)
    return lambda: ray.get(value)


def _put_calls(ray: Any, np: Any, r: _Remotes) -> Fn:
    return lambda: ray.put(0)


def _multi_client_put_calls(ray: Any, np: Any, r: _Remotes) -> Fn:
    return lambda: ray.get([r.do_put_small.remote() for _ in range(10)])


def _put_gigabytes(ray: Any, np: Any, r: _Remotes) -> Fn:
    arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)  # 800 MiB per put
    return lambda: ray.put(arr)


def _multi_client_put_gigabytes(ray: Any, np: Any, r: _Remotes) -> Fn:
    @ray.remote
    def do_put() -> None:
        for _ in range(10):
            ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))  # 80 MiB each

    return lambda: ray.get([do_put.remote() for _ in range(10)])


def _tasks_and_get_batch(ray: Any, np: Any, r: _Remotes) -> Fn:
    def batch() -> int:
        ray.get([r.small_value.remote() for _ in range(1000)])
        return 0

    return batch


def _get_object_containing_10k_refs(ray: Any, np: Any, r: _Remotes) -> Fn:
    ref = r.create_object_containing_ref.remote()
    return lambda: ray.get(ref)


def _wait_1k_refs(ray: Any, np: Any, r: _Remotes) -> Fn:
    def wait_multiple_refs() -> None:
        num_objs = 1000
        not_ready = [r.small_value.remote() for _ in range(num_objs)]
        # Ray asks for the local fetch only once; its raylet keeps the request.
        fetch_local = True
        for _ in range(num_objs):
            _ready, not_ready = ray.wait(not_ready, fetch_local=fetch_local)
            fetch_local = False

    return wait_multiple_refs


def _tasks_sync(ray: Any, np: Any, r: _Remotes) -> Fn:
    return lambda: ray.get(r.small_value.remote())


def _tasks_async(ray: Any, np: Any, r: _Remotes) -> Fn:
    return lambda: ray.get([r.small_value.remote() for _ in range(1000)])


_MULTI_CLIENT_N = 10000
_MULTI_CLIENT_M = 4


def _multi_client_tasks_async(ray: Any, np: Any, r: _Remotes) -> Fn:
    # As in Ray: 4 actors (num_cpus=0), each submitting 10k tasks and getting them.
    clients = [r.Actor.remote() for _ in range(_MULTI_CLIENT_M)]
    return lambda: ray.get([c.small_value_batch.remote(_MULTI_CLIENT_N) for c in clients])


# ----------------------------------------------------------------------------- actors (ray_perf.py)
_N_CPU = max(1, (os.cpu_count() or 2) // 2)
_ONE_TO_N = 5000
_N_TO_N = 5000
_N_TO_N_ARG = 1000
_N_TO_N_CLIENTS = 4


def _actor_sync(ray: Any, np: Any, r: _Remotes) -> Fn:
    a = r.Actor.remote()
    return lambda: ray.get(a.small_value.remote())


def _actor_async(ray: Any, np: Any, r: _Remotes) -> Fn:
    a = r.Actor.remote()
    return lambda: ray.get([a.small_value.remote() for _ in range(1000)])


def _actor_concurrent(ray: Any, np: Any, r: _Remotes) -> Fn:
    a = r.Actor.options(max_concurrency=16).remote()
    return lambda: ray.get([a.small_value.remote() for _ in range(1000)])


def _one_to_n(actor_cls_name: str) -> Callable[..., Fn]:
    def build(ray: Any, np: Any, r: _Remotes) -> Fn:
        actors = [getattr(r, actor_cls_name).remote() for _ in range(_N_CPU)]
        client = r.Client.remote(actors)
        return lambda: ray.get(client.small_value_batch.remote(_ONE_TO_N))

    return build


def _n_to_n(actor_cls_name: str) -> Callable[..., Fn]:
    def build(ray: Any, np: Any, r: _Remotes) -> Fn:
        actors = [getattr(r, actor_cls_name).remote() for _ in range(_N_CPU)]
        return lambda: ray.get([r.work.remote(actors, _N_TO_N) for _ in range(_N_TO_N_CLIENTS)])

    return build


def _n_to_n_with_arg(ray: Any, np: Any, r: _Remotes) -> Fn:
    actors = [r.Actor.remote() for _ in range(_N_CPU)]
    clients = [r.Client.remote(a) for a in actors]
    return lambda: ray.get([c.small_value_batch_arg.remote(_N_TO_N_ARG) for c in clients])


def _async_actor_sync(ray: Any, np: Any, r: _Remotes) -> Fn:
    a = r.AsyncActor.remote()
    return lambda: ray.get(a.small_value.remote())


def _async_actor_async(ray: Any, np: Any, r: _Remotes) -> Fn:
    a = r.AsyncActor.remote()
    return lambda: ray.get([a.small_value.remote() for _ in range(1000)])


def _async_actor_with_args(ray: Any, np: Any, r: _Remotes) -> Fn:
    a = r.AsyncActor.remote()
    return lambda: ray.get([a.small_value_with_arg.remote(i) for i in range(1000)])


def _actor_creation(ray: Any, np: Any, r: _Remotes) -> Fn:
    # Not in ray_perf.py: from Cls.remote() to the first method result, then the actor is killed.
    def create() -> None:
        a = r.Actor.remote()
        ray.get(a.small_value.remote())
        ray.kill(a)

    return create


def _placement_group_create_removal(ray: Any, np: Any, r: _Remotes) -> Fn:
    # As in Ray: 100 one-bundle groups of a tiny custom resource, created, waited for, removed.
    # Needs a cluster with resources={"custom": 100} (run_all and the Ray runner start one).
    import importlib

    pg_mod = importlib.import_module(ray.__name__ + ".util")

    def create_remove() -> None:
        pgs = [pg_mod.placement_group(bundles=[{"custom": 0.001}]) for _ in range(100)]
        for pg in pgs:
            pg.wait(timeout_seconds=30)
        for pg in pgs:
            pg_mod.remove_placement_group(pg)

    return create_remove


#: (Ray's name, operations per call, builder, needs numpy), in ray_perf.py's
#: order. A builder ``(ray, np, remotes) -> fn`` runs only if its workload is
#: selected, so a filtered run does no set-up (puts, big arrays) for the others.
WORKLOADS: list[tuple[str, float, Callable[..., Fn], bool]] = [
    ("single client get calls (Plasma Store)", 1, _get_calls, False),
    ("single client put calls (Plasma Store)", 1, _put_calls, False),
    ("multi client put calls (Plasma Store)", 1000, _multi_client_put_calls, False),
    ("single client put gigabytes", 8 * 0.1, _put_gigabytes, True),
    ("single client tasks and get batch", 1, _tasks_and_get_batch, False),
    ("multi client put gigabytes", 10 * 8 * 0.1, _multi_client_put_gigabytes, True),
    ("single client get object containing 10k refs", 1, _get_object_containing_10k_refs, False),
    ("single client wait 1k refs", 1, _wait_1k_refs, False),
    ("single client tasks sync", 1, _tasks_sync, False),
    ("single client tasks async", 1000, _tasks_async, False),
    ("multi client tasks async", _MULTI_CLIENT_N * _MULTI_CLIENT_M, _multi_client_tasks_async, False),
    ("1:1 actor calls sync", 1, _actor_sync, False),
    ("1:1 actor calls async", 1000, _actor_async, False),
    ("1:1 actor calls concurrent", 1000, _actor_concurrent, False),
    ("1:n actor calls async", _ONE_TO_N * _N_CPU, _one_to_n("Actor"), False),
    ("n:n actor calls async", _N_TO_N * _N_TO_N_CLIENTS, _n_to_n("Actor"), False),
    ("n:n actor calls with arg async", _N_TO_N_ARG * _N_CPU, _n_to_n_with_arg, False),
    ("1:1 async-actor calls sync", 1, _async_actor_sync, False),
    ("1:1 async-actor calls async", 1000, _async_actor_async, False),
    ("1:1 async-actor calls with args async", 1000, _async_actor_with_args, False),
    ("1:n async-actor calls async", _ONE_TO_N * _N_CPU, _one_to_n("AsyncActor"), False),
    ("n:n async-actor calls async", _N_TO_N * _N_TO_N_CLIENTS, _n_to_n("AsyncActor"), False),
    ("actor creation", 1, _actor_creation, False),
    ("placement group create/removal", 100, _placement_group_create_removal, False),
]

WORKLOAD_NAMES = [w[0] for w in WORKLOADS]


def selected(name: str, name_filter: str | None, names: list[str] | None = None) -> bool:
    """Ray's rule (substring of the name), plus an optional exact list."""
    if names is not None and name not in names:
        return False
    return not name_filter or name_filter in name


def run_workloads(ray: Any, name_filter: str | None = None, duration: float = 2.0,
                  names: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the selected workloads on an already initialised ``ray`` (``ember`` or ``ray``)."""
    np: Any
    try:
        import numpy

        np = numpy
    except ImportError:
        np = None
    remotes = _Remotes(ray)
    results = []
    for name, multiplier, build, needs_numpy in WORKLOADS:
        if not selected(name, name_filter, names):
            continue
        if needs_numpy and np is None:
            print(f"{name}: skipped (numpy is not installed)", flush=True)
            continue
        fn = build(ray, np, remotes)
        results.append(timeit(name, fn, multiplier, duration))
        del fn  # drop the workload's objects (the 800 MiB array, the 10k refs) before the next
    return results


def run_all(name_filter: str | None = None, duration: float = 2.0,
            num_cpus: int | None = None) -> list[dict[str, Any]]:
    """Run every selected benchmark against a fresh local cluster; print and return the results.

    Args:
        name_filter: run only benchmarks whose name contains this string.
        duration: timed seconds per benchmark (plus up to one second of warm-up).
        num_cpus: CPUs of the local cluster (default: every core, like ``ray microbenchmark``).

    Returns:
        One dict per benchmark: ``name``, ``mean``, ``std`` and ``unit``
        (``"per second"``, ``"seconds"`` for "init to first task result", or
        ``"GB/s"`` for "object transfer GB/s between two nodes").
    """
    results: list[dict[str, Any]] = []
    if selected(INIT_TO_FIRST_RESULT, name_filter):
        missing = missing_bytecode_cache()
        if missing:
            print(f"note: {missing}", file=sys.stderr, flush=True)
        # Before our own cluster exists, so that it does not compete for the cores.
        results.append(measure_init_to_first_result("ember", num_cpus or os.cpu_count() or 1))
    if selected(CROSS_NODE_TRANSFER, name_filter):
        # Its own two-node cluster, also before the local one.
        import ember

        try:
            import numpy as np
        except ImportError:
            print(f"{CROSS_NODE_TRANSFER}: skipped (numpy is not installed)", flush=True)
        else:
            if ember.is_initialized():
                raise RuntimeError("ember microbenchmark needs a fresh cluster; call ember.shutdown() first.")
            results.append(measure_cross_node_transfer(ember, np))
    if not any(selected(name, name_filter) for name in WORKLOAD_NAMES):
        return results

    import ember

    if ember.is_initialized():
        raise RuntimeError("ember microbenchmark needs a fresh cluster; call ember.shutdown() first.")
    ember.init(address="local", num_cpus=num_cpus, log_to_driver=False, resources={"custom": 100})
    try:
        results += run_workloads(ember, name_filter, duration)
    finally:
        ember.shutdown()
    return results
