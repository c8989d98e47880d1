"""Metrics on real clusters: application metrics from tasks, actors and the driver on the node's
metrics port, system metrics under Ray's names, the Prometheus discovery list as nodes join and
die, ``ember start --metrics-export-port``, and a real Prometheus server scraping it all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from typing import Any

import pytest

import ember
from ember._private import runtime
from ember._private.metrics_scrape import Sample, scrape, select
from ember._private.processes import stop_pid
from ember._private.test_utils import free_port, wait_for_condition
from ember.gcs.metrics_discovery import DISCOVERY_FILE
from ember.util.metrics import Counter, Gauge, Histogram

FAST = {"metrics_report_period_s": 0.05}


def _metrics_address() -> str:
    (node,) = [n for n in ember.nodes() if n["Alive"]]
    assert node["MetricsExportPort"] > 0
    return f"{node['NodeManagerAddress']}:{node['MetricsExportPort']}"


def _total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in select(samples, name, **labels))


def _discovery_targets() -> list[str]:
    with open(os.path.join(runtime.core_worker().session_dir, DISCOVERY_FILE)) as f:
        (group,) = json.load(f)
    assert group["labels"] == {"job": "ray"}
    return sorted(group["targets"])


@ember.remote
def heavy_modules_loaded() -> list[str]:
    import sys

    return [m for m in ("prometheus_client", "aiohttp") if m in sys.modules]


@ember.remote
def count_in_task(n: int) -> None:
    c = Counter("app_requests", description="requests served", tag_keys=("route",))
    for _ in range(n):
        c.inc(tags={"route": "/task"})
    Histogram("app_latency_s", boundaries=[0.1, 1.0], tag_keys=("route",)).observe(0.5, tags={"route": "/task"})


@ember.remote
class Server:
    """Counts requests in an actor (its counter has a default tag)."""

    def __init__(self) -> None:
        self.requests = Counter("app_requests", description="requests served", tag_keys=("route",))
        self.requests.set_default_tags({"route": "/actor"})

    def serve(self, n: int) -> None:
        for _ in range(n):
            self.requests.inc(2)


def test_task_actor_and_driver_metrics_on_the_node_port(ember_env, ember_start):
    ember_env(**FAST)
    early = Counter("app_before_init", description="recorded before init")
    early.inc(3)  # sent with the driver's first batch once init has run
    ember_start()
    ember.get([count_in_task.remote(5), count_in_task.remote(2)])
    server = Server.remote()
    ember.get(server.serve.remote(4))
    Gauge("app_queue_depth", tag_keys=("queue",)).set(11, tags={"queue": "q1"})
    address = _metrics_address()
    session = os.path.basename(runtime.core_worker().session_dir)

    def arrived() -> list[Sample] | None:
        samples = scrape(address)
        if (_total(samples, "ray_app_requests_total", route="/task") == 7
                and _total(samples, "ray_app_requests_total", route="/actor") == 8
                and select(samples, "ray_app_queue_depth") and select(samples, "ray_app_before_init_total")):
            return samples
        return None

    samples = wait_for_condition(arrived, timeout=15)
    (gauge,) = select(samples, "ray_app_queue_depth")
    assert gauge.value == 11 and gauge.labels["queue"] == "q1"
    assert gauge.labels["WorkerId"] == runtime.core_worker().worker_id.hex()
    for sample in select(samples, "ray_app_requests_total") + [gauge]:
        assert sample.labels["Component"] == "core_worker"
        assert sample.labels["SessionName"] == session
        assert sample.labels["NodeAddress"] == "127.0.0.1"
    assert _total(samples, "ray_app_before_init_total") == 3
    # Two tasks observed 0.5 each: both in the le=1.0 bucket.
    assert _total(samples, "ray_app_latency_s_bucket", le="0.1") == 0
    assert _total(samples, "ray_app_latency_s_bucket", le="1.0") == 2
    assert _total(samples, "ray_app_latency_s_sum") == 1.0
    # Recording needs no exposition library: workers that record do not load one.
    assert ember.get(heavy_modules_loaded.remote()) == []
    # The port takes no token and shows none.
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.status == 200 and runtime.core_worker().token.encode() not in response.read()


def test_system_metrics_under_rays_names(ember_env, ember_start):
    ember_env(**FAST)
    ember_start(num_cpus=2)
    server = Server.remote()
    ember.get(server.serve.remote(1))
    held = ember.put(b"x" * (2 * 1024 * 1024))
    address = _metrics_address()

    def ready() -> list[Sample] | None:
        samples = scrape(address)
        return samples if _total(samples, "ray_actors", Name="Server", State="ALIVE") == 1 else None

    samples = wait_for_condition(ready, timeout=10)
    cpu = {s.labels["State"]: s.value for s in select(samples, "ray_resources", Name="CPU")}
    assert sum(cpu.values()) == 2.0 and set(cpu) == {"USED", "AVAILABLE"}
    assert not [s for s in select(samples, "ray_resources") if s.labels["Name"].startswith("node:")]
    assert _total(samples, "ray_object_store_memory", Location="MMAP_SHM", ObjectState="SEALED") >= 2 * 1024 * 1024
    assert select(samples, "ray_object_store_memory", Location="SPILLED")
    assert select(samples, "ray_spill_manager_objects_bytes", State="Spilled")
    (mem_total,) = select(samples, "ray_node_mem_total", RayNodeType="head", IsHeadNode="true")
    (mem_used,) = select(samples, "ray_node_mem_used")
    assert 0 < mem_used.value < mem_total.value
    (cpu_util,) = select(samples, "ray_node_cpu_utilization")
    assert 0 <= cpu_util.value <= 100
    components = {s.labels["Component"] for s in select(samples, "ray_component_uss_mb")}
    assert {"raylet", "gcs", "driver"} <= components and components & {"ray::IDLE", "ray::worker"}
    (raylet_rss,) = select(samples, "ray_component_rss_mb", Component="raylet")
    assert raylet_rss.labels["pid"] and 5 < raylet_rss.value < 2000
    del held


@ember.remote
def wait_for_gate(path: str) -> None:
    from ember._private.test_utils import wait_for_file

    wait_for_file(path, timeout=60)


@ember.remote(max_retries=0)
def fails() -> None:
    raise ValueError("expected")


@ember.remote(max_retries=1)
def dies_once(marker: str) -> None:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)


def test_ray_tasks_marks_retries(ember_env, ember_start, tmp_path):
    ember_env(**FAST)
    ember_start()
    address = _metrics_address()
    ember.get(dies_once.remote(str(tmp_path / "died")))

    def owner_rows() -> list[tuple[str, str, float]]:
        return [(s.labels["State"], s.labels["IsRetry"], s.value)
                for s in select(scrape(address), "ray_tasks", Name="dies_once", Source="owner") if s.value]

    # The second attempt finished: counted once, as a retry.
    wait_for_condition(lambda: owner_rows() == [("FINISHED", "1", 1.0)], timeout=10)


def _wait_for_counts(counts: Any, expected: dict[tuple[str, str, str], float]) -> None:
    def without_creation() -> dict[tuple[str, str, str], float]:
        return {k: v for k, v in counts().items() if k[0] != "Server.__init__"}

    try:
        wait_for_condition(lambda: without_creation() == expected, timeout=10)
    except RuntimeError:
        assert without_creation() == expected  # shows the difference


def test_ray_tasks_counts_tasks_and_actor_calls_by_state(ember_env, ember_start, tmp_path):
    ember_env(**FAST)
    ember_start(num_cpus=2)
    gate = str(tmp_path / "gate")
    address = _metrics_address()
    ember.get([count_in_task.remote(1) for _ in range(3)])
    with pytest.raises(ember.exceptions.RayTaskError):
        ember.get(fails.remote())
    server = Server.remote()
    ember.get([server.serve.remote(1) for _ in range(2)])
    blocked = wait_for_gate.remote(gate)

    def counts() -> dict[tuple[str, str, str], float]:
        out: dict[tuple[str, str, str], float] = {}
        for s in select(scrape(address), "ray_tasks"):
            key = (s.labels["Name"], s.labels["State"], s.labels["Source"])
            out[key] = out.get(key, 0.0) + s.value
        return {k: v for k, v in out.items() if v}

    expected = {
        ("count_in_task", "FINISHED", "owner"): 3, ("fails", "FAILED", "owner"): 1,
        ("Server.serve", "FINISHED", "owner"): 2,
        ("wait_for_gate", "SUBMITTED_TO_WORKER", "owner"): 1, ("wait_for_gate", "RUNNING", "executor"): 1,
    }
    _wait_for_counts(counts, expected)
    (row,) = [s for s in select(scrape(address), "ray_tasks", Name="fails") if s.value]
    assert row.labels["IsRetry"] == "0" and row.labels["JobId"] == runtime.core_worker().job_id.hex()
    assert not [s for s in select(scrape(address), "ray_tasks", IsRetry="1") if s.value]  # nothing was retried
    with open(gate, "w") as f:
        f.write("go")
    ember.get(blocked)
    expected = {k: v for k, v in expected.items() if k[0] != "wait_for_gate"} | {("wait_for_gate", "FINISHED", "owner"): 1}
    _wait_for_counts(counts, expected)


def test_collection_off_records_nothing_and_serves_node_metrics(ember_env, ember_start):
    ember_env(**FAST, enable_metrics_collection="0")
    ember_start()
    ember.get(count_in_task.remote(3))
    Gauge("app_off_gauge").set(1)
    address = _metrics_address()

    def recorded() -> bool:
        samples = scrape(address)
        assert select(samples, "ray_node_mem_total") and select(samples, "ray_resources")
        return bool(select(samples, "ray_app_requests_total") or select(samples, "ray_app_off_gauge")
                    or [s for s in select(samples, "ray_tasks") if s.value])

    # Ten report periods: with collection on, all of it would have arrived by then.
    with pytest.raises(RuntimeError, match="not met"):
        wait_for_condition(recorded, timeout=0.5, raise_exceptions=True)


def test_discovery_file_follows_nodes_joining_and_dying(ember_env, own_cluster):
    from ember.cluster_utils import Cluster

    ember_env(**FAST, node_death_timeout_s=1.0, resource_report_period_s=0.05)
    cluster = Cluster(initialize_head=False, shutdown_at_exit=False)
    try:
        cluster.add_node(num_cpus=1, object_store_memory=64 * 1024 * 1024)
        cluster.connect()
        head_port = [n["MetricsExportPort"] for n in ember.nodes()][0]
        assert _discovery_targets() == [f"127.0.0.1:{head_port}"]
        worker = cluster.add_node(num_cpus=1, object_store_memory=64 * 1024 * 1024)
        (row,) = [n for n in ember.nodes() if n["NodeID"] == worker.node_id]
        assert row["MetricsExportPort"] not in (0, head_port)
        wait_for_condition(lambda: _discovery_targets() == sorted(
            [f"127.0.0.1:{head_port}", f"127.0.0.1:{row['MetricsExportPort']}"]), timeout=5)
        assert select(scrape(f"127.0.0.1:{row['MetricsExportPort']}"), "ray_node_mem_total", RayNodeType="worker")
        worker.kill_raylet()
        wait_for_condition(lambda: _discovery_targets() == [f"127.0.0.1:{head_port}"], timeout=10)
    finally:
        ember.shutdown()
        cluster.shutdown()


def test_ember_start_metrics_export_port_and_a_busy_port(tmp_path, own_cluster):
    from cli_cluster import cli_env, ember_cli, end_everything, session_dirs

    from ember.rpc.sync_client import gcs_request

    env = cli_env(str(tmp_path / "cli"))
    metrics_port = free_port()
    gcs_port = free_port()
    try:
        out = ember_cli(["start", "--head", "--port", str(gcs_port), "--num-cpus", "1",
                         "--object-store-memory", str(64 * 1024 * 1024), "--metrics-export-port", str(metrics_port)], env)
        assert out.returncode == 0, out.stderr
        (session,) = session_dirs(str(tmp_path / "cli"))
        with open(os.path.join(session, "token")) as f:
            token = f.read().strip()
        (node,) = gcs_request(f"127.0.0.1:{gcs_port}", token, "get_nodes")
        assert node["MetricsExportPort"] == metrics_port
        assert select(scrape(f"127.0.0.1:{metrics_port}"), "ray_node_cpu_count")
        # A second node asking for the same port fails clearly and starts nothing.
        busy = ember_cli(["start", "--address", f"127.0.0.1:{gcs_port}", "--num-cpus", "1",
                          "--metrics-export-port", str(metrics_port)], env)
        assert busy.returncode != 0 and f"cannot listen on 127.0.0.1:{metrics_port}" in busy.stderr
        assert len(gcs_request(f"127.0.0.1:{gcs_port}", token, "get_nodes")) == 1
    finally:
        end_everything(str(tmp_path / "cli"))


PROMETHEUS = shutil.which("prometheus")


def _prometheus_query(port: int, query: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as response:
        reply = json.load(response)
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus package is not installed (tests/system-packages.txt)")
def test_a_real_prometheus_scrapes_the_cluster_through_the_discovery_file(ember_env, ember_start, tmp_path):
    ember_env(**FAST)
    ember_start()
    ember.get(count_in_task.remote(7))
    discovery = os.path.join(runtime.core_worker().session_dir, DISCOVERY_FILE)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n- job_name: ray\n  file_sd_configs:\n"
        f"  - files: ['{discovery}']\n    refresh_interval: 1s\n"
    )
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        def scraped() -> list[dict[str, Any]] | None:
            rows = _prometheus_query(port, 'ray_app_requests_total{route="/task"}')
            return rows if rows and float(rows[0]["value"][1]) == 7 else None

        try:
            (row,) = wait_for_condition(scraped, timeout=30, retry_interval_ms=200)
        except RuntimeError:
            log.flush()
            raise AssertionError((tmp_path / "prometheus.log").read_text()[-2000:]) from None
        assert row["metric"]["job"] == "ray" and row["metric"]["SessionName"] == os.path.basename(
            runtime.core_worker().session_dir)
        assert _prometheus_query(port, 'sum(ray_resources{Name="CPU"})')[0]["value"][1] == "2"
        assert _prometheus_query(port, 'up{job="ray"}')[0]["value"][1] == "1"
    finally:
        stop_pid(proc.pid, 5.0, proc)
        log.close()
