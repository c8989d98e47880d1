"""A chaos battery: real workloads on a three-node cluster while processes are killed.

``run(profile, seed)`` starts a ``Cluster`` of three node daemons on this
machine and a driver, then, for the profile's duration:

* the driver keeps trees of nested retryable tasks (``max_retries=-1``) in
  flight; leaves return small values or object-store arrays; every tree's
  result is checked against a value computed locally;
* actors with ``max_restarts=-1, max_task_retries=-1`` receive numbered calls,
  a few in flight at a time; each call appends its number to a file that
  survives the actor's restarts and returns a checked value;
* a chaos thread SIGKILLs a random worker process every ``worker_kill_period_s``
  (leased workers first: the ones doing work; pids come from the node daemons'
  ``get_info``, never from names) and a whole non-head node every
  ``node_kill_period_s``, replacing it with a new node.

Then it checks that nothing was lost: every returned value was right, every
actor call was delivered at least once with first deliveries in order, and,
within seconds, no object-store memory or spill file is left on the live
nodes, every resource is returned (available == total), and once the cluster
is shut down no process it ever started remains.

The kill *schedule* is timed; what is killed is drawn from ``random.Random(seed)``,
so a run's choices are reproducible. ``benchmarks/chaos.py`` runs the long profile.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    # CI: well under a minute on two cores, one node replaced.
    "short": {
        "duration_s": 14.0, "worker_kill_period_s": 0.5, "node_kill_period_s": 0.0, "node_kills": 1,
        "trees_in_flight": 4, "depth": 2, "fanout": 3, "leaf_s": 0.02, "actors": 2, "calls_in_flight": 4,
        "drain_timeout_s": 60.0,
    },
    # benchmarks/chaos.py: ten minutes, a worker every ~2 s, a node every ~20 s.
    "long": {
        "duration_s": 600.0, "worker_kill_period_s": 2.0, "node_kill_period_s": 20.0, "node_kills": 0,
        "trees_in_flight": 8, "depth": 3, "fanout": 3, "leaf_s": 0.02, "actors": 4, "calls_in_flight": 8,
        "drain_timeout_s": 180.0,
    },
}

MiB = 1024 * 1024
ARRAY_LEN = 20_000  # int64: 160 KB, above the inline limit, so it lives in an object store


# ============================================================================ the workload
def leaf_value(key: int) -> int:
    return (key * 2654435761) % 1_000_003


def expected_tree(depth: int, fanout: int, key: int) -> int:
    if depth == 0:
        return leaf_value(key)
    return sum(expected_tree(depth - 1, fanout, key * fanout + i) for i in range(fanout))


def tree_size(depth: int, fanout: int) -> int:
    return sum(fanout**level for level in range(depth + 1))


def _make_remotes() -> tuple[Any, Any]:
    import ember

    @ember.remote(max_retries=-1)
    def chaos_tree(depth: int, fanout: int, key: int, leaf_s: float) -> Any:
        import time as _time

        import numpy as np

        if depth == 0:
            _time.sleep(leaf_s)  # work that a kill can interrupt
            value = leaf_value(key)
            return np.full(ARRAY_LEN, value, dtype=np.int64) if key % 4 == 0 else value
        children = [chaos_tree.remote(depth - 1, fanout, key * fanout + i, leaf_s) for i in range(fanout)]
        total = 0
        for child in ember.get(children):
            if isinstance(child, np.ndarray):
                assert child.shape == (ARRAY_LEN,) and int(child.min()) == int(child.max())
                total += int(child[0])
            else:
                total += int(child)
        return total

    @ember.remote(max_restarts=-1, max_task_retries=-1)
    class ChaosActor:
        def __init__(self, path: str) -> None:
            self.path = path
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

        def call(self, n: int) -> int:
            os.write(self.fd, f"{n}\n".encode())  # one append per delivery; survives restarts
            time.sleep(0.002)  # a little work, so calls are in flight when a kill comes
            return n * 3 + 1

    return chaos_tree, ChaosActor


@dataclass
class Report:
    profile: str
    seed: int
    duration_s: float = 0.0
    tasks_run: int = 0
    trees_checked: int = 0
    actor_calls_run: int = 0
    actor_redeliveries: int = 0
    worker_kills: int = 0
    node_kills: int = 0
    values_checked: int = 0
    lost: int = 0
    wrong: int = 0
    errors: int = 0
    out_of_order: int = 0
    undelivered: int = 0
    leftover_store_bytes: int = 0
    leftover_spill_files: int = 0
    resources_not_returned: int = 0
    orphans: int = 0
    cleanup_s: float = 0.0
    problems: list[str] | None = None

    def ok(self) -> bool:
        return not (self.lost or self.wrong or self.errors or self.out_of_order or self.undelivered
                    or self.leftover_store_bytes or self.leftover_spill_files or self.resources_not_returned
                    or self.orphans)


# ============================================================================ chaos
class _Chaos(threading.Thread):
    def __init__(self, cluster: Any, cfg: dict[str, Any], rng: random.Random, report: Report, node_args: dict[str, Any],
                 seen_pids: set[int]) -> None:
        super().__init__(name="ember-chaos", daemon=True)
        self.cluster = cluster
        self.cfg = cfg
        self.rng = rng
        self.report = report
        self.node_args = node_args
        self.seen_pids = seen_pids
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.log: list[str] = []

    def _remember_processes(self) -> None:
        """Every process under a node daemon (workers, fork servers): none may outlive the cluster."""
        for node in self.cluster.list_all_nodes():
            self.seen_pids.update(_descendants(node.raylet_proc.pid))

    def _workers(self, node: Any) -> list[dict[str, Any]]:
        from ember.rpc.sync_client import gcs_request

        try:
            info = gcs_request(node.address, self.cluster.token, "get_info", timeout=2.0)
        except Exception:
            return []
        return [w for w in info["workers"] if w["state"] != "DEAD"]

    def _kill_worker(self) -> None:
        self._remember_processes()
        nodes = [n for n in self.cluster.list_all_nodes() if n.raylet_proc.poll() is None]
        self.rng.shuffle(nodes)
        for node in nodes:
            workers = self._workers(node)
            for w in workers:
                self.seen_pids.add(w["pid"])
            leased = sorted((w for w in workers if w["state"] == "LEASED"), key=lambda w: w["pid"])
            pool = leased or sorted(workers, key=lambda w: w["pid"])
            if not pool:
                continue
            victim = self.rng.choice(pool)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.report.worker_kills += 1
            return

    def _kill_node(self) -> None:
        candidates = sorted(self.cluster.worker_nodes, key=lambda n: n.node_id)
        if not candidates:
            return
        node = self.rng.choice(candidates)
        self._remember_processes()
        self.cluster.remove_node(node, allow_graceful=False)
        self.report.node_kills += 1
        replacement = self.cluster.add_node(**self.node_args)
        self.seen_pids.add(replacement.raylet_proc.pid)
        self.log.append(f"node {node.node_id[:12]} killed, replaced by {replacement.node_id[:12]}")

    def run(self) -> None:
        try:
            cfg = self.cfg
            start = time.monotonic()
            next_worker = start + cfg["worker_kill_period_s"]
            if cfg["node_kill_period_s"]:
                node_times = []
                t = start + cfg["node_kill_period_s"]
                while t < start + cfg["duration_s"]:
                    node_times.append(t)
                    t += cfg["node_kill_period_s"]
            else:
                n = cfg["node_kills"]
                node_times = [start + cfg["duration_s"] * (i + 1) / (n + 1) for i in range(n)]
            while not self.stop.is_set():
                now = time.monotonic()
                if node_times and now >= node_times[0]:
                    node_times.pop(0)
                    self._kill_node()
                elif now >= next_worker:
                    self._kill_worker()
                    next_worker = now + cfg["worker_kill_period_s"] * self.rng.uniform(0.5, 1.5)
                wake = min([next_worker] + node_times[:1])
                self.stop.wait(max(0.0, wake - time.monotonic()))  # the chaos schedule: timed by design
        except BaseException as exc:  # reported by run()
            self.error = exc


# ============================================================================ checks after the run
def _node_infos(cluster: Any) -> list[dict[str, Any]]:
    from ember.rpc.sync_client import gcs_request

    return [gcs_request(n.address, cluster.token, "get_info", timeout=5.0) for n in cluster.list_all_nodes()]


def _who_holds(cluster: Any, infos: list[dict[str, Any]]) -> str:
    """The objects left in the stores, and every process that still references one of them."""
    from ember.cli.memory_report import collect

    left = {name: info["store_dir"] for info in infos for name in _listdir(info["store_dir"])}
    try:
        _, tables = collect(cluster.address, cluster.token)
    except Exception as exc:
        return f"objects left: {sorted(left)} (reference tables unavailable: {exc})"
    holders = [
        f"{t['mode']} pid {t['pid']}: {row['object_id'][:12]} {row['reference_type']} owned={row['owned']}"
        for t in tables for row in t["objects"] if row["object_id"] in left
    ]
    return f"objects left: {[(k[:12], os.path.basename(v)[-12:]) for k, v in left.items()]}; referenced by: {holders or 'nobody'}"


def _listdir(path: str) -> list[str]:
    try:
        return [n for n in os.listdir(path) if len(n) == 40 and not n.endswith(".part")]
    except OSError:
        return []


def _spill_files(session_dir: str, node_ids: list[str]) -> list[str]:
    files: list[str] = []
    for node_id in node_ids:
        for path in glob.glob(os.path.join(session_dir, "spill", node_id[:12], "**"), recursive=True):
            if os.path.isfile(path):
                files.append(path)
    return files


def _resources_returned(info: dict[str, Any]) -> bool:
    total, available = info["resources"], info["available"]
    return all(abs(available.get(k, 0.0) - v) < 1e-6 for k, v in total.items())


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)  # polling a condition


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _diagnose(refs: list[Any]) -> str:
    """The driver's view of results that never came back (which task, which lease, which actor state)."""
    from ember._private import runtime

    worker = runtime.core_worker()
    lines = []

    def describe() -> None:
        by_return = {rid: e for e in worker.submitter.tasks.values() for rid in e.return_ids}
        for ref in refs:
            entry = by_return.get(ref._id)
            if entry is not None:
                lease = entry.lease
                lines.append(f"task {entry.name} {entry.spec['tid'].hex()[:12]}: {entry.state.name}, attempt "
                             f"{entry.attempt}, lease pid {getattr(lease, 'pid', None)} dead={getattr(lease, 'dead', None)}")
        for actor_id, client in worker.actor_submitter.clients.items():
            lines.append(
                f"actor {actor_id.hex()[:12]}: {client.state.value} incarnation {client.incarnation}, polling={client.polling}, "
                f"queue={len(client.queue)}, in_flight={len(client.in_flight)}, "
                f"conn={'none' if client.conn is None else ('closed' if client.conn.closed else client.conn.peername)}"
            )

    try:
        worker.links.run(_as_coroutine(describe), timeout=10)
        for actor in worker.gcs_call("list_actors", None):
            lines.append(f"control service: actor {actor['actor_id'].hex()[:12]} {actor['state']} incarnation "
                         f"{actor['incarnation']} pid {actor['pid']} restarts {actor['num_restarts']}")
    except Exception as exc:
        lines.append(f"(diagnosis failed: {exc!r})")
    return "\n".join(lines)


async def _as_coroutine(fn: Any) -> Any:
    return fn()


def _pid_gone(pid: int) -> bool:
    from ember._private.processes import pid_alive

    return not pid_alive(pid)


# ============================================================================ run
def run(profile: str = "short", seed: int = 0, *, duration_s: float | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run the chaos battery; returns the report as a dict (see ``Report``)."""
    import ember
    from ember.cluster_utils import Cluster

    if profile not in PROFILES:
        raise ValueError(f"unknown chaos profile {profile!r}: use one of {sorted(PROFILES)}")
    cfg = dict(PROFILES[profile])
    if duration_s is not None:
        cfg["duration_s"] = float(duration_s)
    rng = random.Random(seed)
    report = Report(profile, seed)
    problems: list[str] = []
    seen_pids: set[int] = set()
    work_dir = tempfile.mkdtemp(prefix="ember_chaos_")
    node_args: dict[str, Any] = {"num_cpus": 2, "object_store_memory": 100 * MiB}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * MiB},
                      shutdown_at_exit=False)
    chaos: _Chaos | None = None

    def say(text: str) -> None:
        if verbose:
            print(f"[chaos {time.monotonic() - t0:6.1f}s] {text}", flush=True)

    t0 = time.monotonic()
    try:
        for _ in range(2):
            cluster.add_node(**node_args)
        seen_pids.update(p.pid for _, p in cluster._head.procs)  # type: ignore[union-attr]
        for node in cluster.list_all_nodes():
            seen_pids.update(_descendants(node.raylet_proc.pid))
        ember.init(address=cluster.address, _token=cluster.token, log_to_driver=False)
        chaos_tree, ChaosActor = _make_remotes()
        actors = []
        logs = []
        for i in range(cfg["actors"]):
            path = os.path.join(work_dir, f"actor{i}.log")
            logs.append(path)
            actors.append(ChaosActor.remote(path))
        ember.get([a.call.remote(-1) for a in actors], timeout=60)  # every actor is up
        next_call = [0] * len(actors)
        returned: list[set[int]] = [set() for _ in actors]
        in_flight: dict[Any, tuple[str, Any]] = {}
        depth, fanout = cfg["depth"], cfg["fanout"]
        next_key = 1

        chaos = _Chaos(cluster, cfg, rng, report, node_args, seen_pids)
        start = time.monotonic()
        deadline = start + cfg["duration_s"]
        chaos.start()
        say(f"started: 3 nodes, {len(actors)} actors, kills every ~{cfg['worker_kill_period_s']}s")
        last_progress = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline and chaos.is_alive():
                chaos.stop.set()
                chaos.join()
                say(f"chaos over: {report.worker_kills} worker kills, {report.node_kills} node kills; draining")
            if now < deadline:
                while sum(1 for kind, _ in in_flight.values() if kind == "tree") < cfg["trees_in_flight"]:
                    key = next_key
                    next_key += 1
                    ref = chaos_tree.remote(depth, fanout, key, cfg["leaf_s"])
                    in_flight[ref] = ("tree", key)
                for i, actor in enumerate(actors):
                    outstanding = sum(1 for kind, v in in_flight.values() if kind == "call" and v[0] == i)
                    while outstanding < cfg["calls_in_flight"]:
                        n = next_call[i]
                        next_call[i] += 1
                        in_flight[actor.call.remote(n)] = ("call", (i, n))
                        outstanding += 1
            if not in_flight:
                break
            ready, _ = ember.wait(list(in_flight), num_returns=1, timeout=0.2)
            if ready:
                last_progress = time.monotonic()
            for ref in ready:
                kind, what = in_flight.pop(ref)
                try:
                    value = ember.get(ref, timeout=30)
                except Exception as exc:
                    report.errors += 1
                    problems.append(f"{kind} {what}: {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                report.values_checked += 1
                if kind == "tree":
                    if value != expected_tree(depth, fanout, what):
                        report.wrong += 1
                        problems.append(f"tree {what}: got {value}, expected {expected_tree(depth, fanout, what)}")
                    report.trees_checked += 1
                    report.tasks_run += tree_size(depth, fanout)
                else:
                    i, n = what
                    if value != n * 3 + 1:
                        report.wrong += 1
                        problems.append(f"actor {i} call {n}: got {value}")
                    returned[i].add(n)
                    report.actor_calls_run += 1
            if time.monotonic() > deadline + cfg["drain_timeout_s"] or (
                time.monotonic() > deadline and time.monotonic() - last_progress > cfg["drain_timeout_s"] / 2
            ):
                report.lost += len(in_flight)
                problems.append(f"{len(in_flight)} result(s) never came back: {sorted(map(str, in_flight.values()))[:10]}")
                problems.append(_diagnose(list(in_flight)))
                break
        report.duration_s = round(time.monotonic() - start, 2)
        if chaos.error is not None:
            problems.append(f"the chaos thread failed: {type(chaos.error).__name__}: {chaos.error}")
            report.errors += 1
        say(f"workload done: {report.tasks_run} tasks, {report.actor_calls_run} actor calls")

        # Every call was delivered at least once, and first deliveries came in submission order.
        for i, path in enumerate(logs):
            with open(path) as f:
                delivered = [int(line) for line in f if line.strip()]
            delivered = [n for n in delivered if n >= 0]
            firsts = list(dict.fromkeys(delivered))
            report.actor_redeliveries += len(delivered) - len(firsts)
            missing = set(range(next_call[i])) - set(firsts)
            report.undelivered += len(missing)
            if missing:
                problems.append(f"actor {i}: calls never delivered: {sorted(missing)[:10]}")
            if firsts != sorted(firsts):
                report.out_of_order += 1
                problems.append(f"actor {i}: first deliveries out of order: {firsts[:50]}")
        for actor in actors:
            ember.kill(actor)
        del actors, in_flight

        # Within seconds: nothing left in the stores or spilled, every resource back.
        cleanup_start = time.monotonic()
        session_dir = cluster._head.session_dir  # type: ignore[union-attr]

        def clean() -> bool:
            infos = _node_infos(cluster)
            return (all(i["store"]["used"] == 0 for i in infos) and all(_resources_returned(i) for i in infos)
                    and not _spill_files(session_dir, [n.node_id for n in cluster.list_all_nodes()]))

        _wait(clean, 15.0)
        report.cleanup_s = round(time.monotonic() - cleanup_start, 2)
        infos = _node_infos(cluster)
        report.leftover_store_bytes = sum(i["store"]["used"] for i in infos)
        report.resources_not_returned = sum(1 for i in infos if not _resources_returned(i))
        report.leftover_spill_files = len(_spill_files(session_dir, [n.node_id for n in cluster.list_all_nodes()]))
        if report.leftover_store_bytes:
            problems.append(f"object stores still hold {report.leftover_store_bytes} bytes: "
                            f"{[i['store'] for i in infos]}")
            problems.append(_who_holds(cluster, infos))
        if report.resources_not_returned:
            problems.append(f"resources not returned: {[(i['resources'], i['available']) for i in infos]}")
        if report.leftover_spill_files:
            problems.append(f"{report.leftover_spill_files} spill file(s) left")
        for info in infos:
            seen_pids.update(w["pid"] for w in info["workers"])
    finally:
        if chaos is not None and chaos.is_alive():
            chaos.stop.set()
            chaos.join(timeout=30)
        for node in cluster.list_all_nodes():
            seen_pids.update(_descendants(node.raylet_proc.pid))
        cluster.shutdown()
        shutil.rmtree(work_dir, ignore_errors=True)
    # No process the cluster ever ran is left behind.
    _wait(lambda: all(_pid_gone(p) for p in seen_pids), 10.0)
    orphans = sorted(p for p in seen_pids if not _pid_gone(p))
    report.orphans = len(orphans)
    if orphans:
        problems.append(f"processes left running: {orphans}")
    report.problems = problems
    say(f"report: {asdict(report)}")
    return asdict(report)
