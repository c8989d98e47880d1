"""The head HTTP server's metrics routes: Prometheus HTTP service discovery and current values as JSON."""

from __future__ import annotations

import json
import os

from http_helpers import http, session_token

import ember
from ember._private.test_utils import wait_for_condition
from ember.gcs.metrics_discovery import DISCOVERY_FILE
from ember.util.metrics import Counter


@ember.remote
def serve_one() -> None:
    Counter("dash_requests", tag_keys=("route",)).inc(tags={"route": "/x"})


def test_service_discovery_and_current_values(ember_env, ember_start):
    ember_env(metrics_report_period_s=0.05)
    ctx = ember_start(include_dashboard=True, dashboard_port=0)
    url, session_dir = ctx.dashboard_url, ctx["session_dir"]
    token = session_token(session_dir)
    wait_for_condition(lambda: http(url, "/api/gcs_healthz").status == 200, timeout=20)
    ember.get([serve_one.remote() for _ in range(3)])

    # Service discovery: the token is needed; the list is the discovery file's.
    assert http(url, "/api/prometheus/sd").status == 401
    reply = http(url, "/api/prometheus/sd", token=token)
    assert reply.status == 200 and reply.headers["Cache-Control"] == "no-store"
    with open(os.path.join(session_dir, DISCOVERY_FILE)) as f:
        assert reply.json() == json.load(f)
    (node,) = ember.nodes()
    assert reply.json()[0]["targets"] == [f"127.0.0.1:{node['MetricsExportPort']}"]

    # Current values, filtered by family: a counter's family name keeps its _total samples.
    assert http(url, "/api/metrics?name=ray_dash_requests").status == 401

    def counted() -> list[dict]:
        values = http(url, "/api/metrics?name=ray_dash_requests&name=ray_node_cpu_count", token=token).json()
        samples = values["nodes"][node["NodeID"]]
        total = sum(s["value"] for s in samples if s["name"] == "ray_dash_requests_total")
        return samples if total == 3 else []

    samples = wait_for_condition(counted, timeout=10)
    assert {s["name"] for s in samples} == {"ray_dash_requests_total", "ray_node_cpu_count"}
    assert all(s["labels"]["route"] == "/x" for s in samples if s["name"] == "ray_dash_requests_total")
    everything = http(url, "/api/metrics", token=token).json()
    assert everything["unreachable"] == []
    head_samples = everything["nodes"][node["NodeID"]]
    assert {"ray_tasks", "ray_resources"} <= {s["name"] for s in head_samples}
    components = {s["labels"]["Component"] for s in head_samples if s["name"] == "ray_component_uss_mb"}
    assert {"raylet", "gcs", "dashboard", "driver"} <= components
    bad = http(url, "/api/metrics?" + "&".join(["name=x"] * 101), token=token)
    assert bad.status == 400 and "at most 100" in bad.text
    assert http(url, "/api/metrics?name=", token=token).status == 400
