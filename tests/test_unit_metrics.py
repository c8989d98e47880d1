"""Unit tests of application metrics: the Ray API and its errors, batching, the node's store,
the exposition, the metrics port's HTTP handling and the Prometheus discovery list (no cluster)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from ember._private.metrics_scrape import parse, select
from ember.core import metrics_recorder
from ember.core.metrics_recorder import MetricsRecorder
from ember.gcs import metrics_discovery
from ember.raylet import metric_families
from ember.raylet.metrics_http import MetricsHttpServer
from ember.raylet.user_metrics import UserMetrics
from ember.util.metrics import Counter, Gauge, Histogram

LABELS = {"NodeAddress": "127.0.0.1", "SessionName": "session_x", "Version": "0.1.0"}


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> MetricsRecorder:
    """A fresh process recorder (no core worker: records stay pending)."""
    fresh = MetricsRecorder()
    monkeypatch.setattr(metrics_recorder, "_recorder", fresh)
    return fresh


# ============================================================================ the API and its errors
@pytest.mark.parametrize("make, error, match", [
    (lambda: Counter(""), ValueError, "Empty name"),
    (lambda: Counter("1abc"), ValueError, "Invalid metric name"),
    (lambda: Counter("a-b"), ValueError, "Invalid metric name"),
    (lambda: Counter(3), TypeError, "must be str"),
    (lambda: Counter("x", tag_keys=["a"]), TypeError, "tag_keys should be a tuple"),
    (lambda: Counter("x", tag_keys=(1,)), TypeError, "Tag keys must be str"),
    (lambda: Counter("x", tag_keys=("a-b",)), ValueError, "Invalid tag key"),
    (lambda: Counter("x", tag_keys=("__a",)), ValueError, "Invalid tag key"),
    (lambda: Counter("x", tag_keys=("a", "a")), ValueError, "Duplicate tag keys"),
    (lambda: Histogram("h"), ValueError, "boundaries argument should be provided"),
    (lambda: Histogram("h", boundaries=[]), ValueError, "boundaries argument should be provided"),
    (lambda: Histogram("h", boundaries=[0, 1]), ValueError, "index 0"),
    (lambda: Histogram("h", boundaries=[1, -2]), ValueError, "index 1"),
    (lambda: Histogram("h", boundaries=[1, "2"]), TypeError, "index 1"),
    (lambda: Histogram("h", boundaries=[1], tag_keys=("le",)), ValueError, "'le'"),
])
def test_bad_definitions_raise(recorder, make, error, match):
    with pytest.raises(error, match=match):
        make()
    assert recorder.take_batch() is None


def test_bad_records_raise_and_record_nothing(recorder):
    c = Counter("requests", tag_keys=("route",))
    with pytest.raises(ValueError, match="Missing value for tag key"):
        c.inc()
    with pytest.raises(ValueError, match="Unrecognized tag key other"):
        c.inc(1, tags={"route": "/", "other": "x"})
    with pytest.raises(TypeError, match="Tag values must be str"):
        c.inc(1, tags={"route": 1})
    with pytest.raises(ValueError, match="value must be >0"):
        c.inc(0, tags={"route": "/"})
    with pytest.raises(ValueError, match="value must be >0"):
        c.inc(-1, tags={"route": "/"})
    with pytest.raises(TypeError, match="value must be int or float"):
        c.inc("1", tags={"route": "/"})
    with pytest.raises(ValueError, match="Unrecognized tag key b"):
        c.set_default_tags({"b": "x"})
    with pytest.raises(TypeError, match="Tag values must be str"):
        c.set_default_tags({"route": 2})
    g = Gauge("temperature")
    with pytest.raises(TypeError, match="value must be int or float"):
        g.set("hot")
    with pytest.raises(TypeError, match="value must be int or float"):
        Histogram("latency", boundaries=[1.0]).observe(None)
    assert recorder.take_batch() is None


def test_same_name_must_keep_its_shape(recorder):
    Counter("jobs", tag_keys=("a",))
    Counter("jobs", description="again", tag_keys=("a",))  # the same shape: fine (tasks redefine metrics)
    with pytest.raises(ValueError, match="already defined in this process as a counter"):
        Gauge("jobs", tag_keys=("a",))
    with pytest.raises(ValueError, match="already defined"):
        Counter("jobs", tag_keys=("a", "b"))
    Histogram("lat", boundaries=[1, 2])
    with pytest.raises(ValueError, match="boundaries"):
        Histogram("lat", boundaries=[1, 3])


def test_default_tags_info_and_pickling(recorder):
    import pickle

    c = Counter("hits", description="d", tag_keys=("a", "b"))
    assert c.set_default_tags({"a": "1"}) is c
    assert c.info == {"name": "hits", "description": "d", "tag_keys": ("a", "b"), "default_tags": {"a": "1"}}
    c.inc(tags={"b": "2"})
    c.inc(2, tags={"a": "9", "b": "2"})  # given tags win over default ones
    h = Histogram("lat", boundaries=[5, 1], tag_keys=("x",))
    assert h.info["boundaries"] == [5, 1]
    copy = pickle.loads(pickle.dumps(h))
    assert (copy.info, copy.boundaries) == (h.info | {"default_tags": {}}, [5, 1])
    assert pickle.loads(pickle.dumps(c)).info["tag_keys"] == ("a", "b")
    Gauge("g").set(None)  # None does nothing, as in Ray
    batch = recorder.take_batch()
    assert sorted(map(tuple, (p[:2] for p in batch["points"]))) == [("hits", ["1", "2"]), ("hits", ["9", "2"])]


def test_records_are_aggregated_until_the_batch(recorder):
    c = Counter("c", tag_keys=("k",))
    g = Gauge("g")
    h = Histogram("h", boundaries=[1.0, 10.0])
    for _ in range(1000):
        c.inc(tags={"k": "a"})
    c.inc(0.5, tags={"k": "b"})
    g.set(3)
    g.set(4)
    for value in (0.5, 1.0, 5, 10.0, 11, 1e9):
        h.observe(value)
    batch = recorder.take_batch()
    points = {(name, tuple(tags)): value for name, tags, value in batch["points"]}
    assert points == {
        ("c", ("a",)): 1000.0, ("c", ("b",)): 0.5, ("g", ()): 4.0,
        # le=1 holds 0.5 and 1.0; le=10 holds 5 and 10; +Inf holds 11 and 1e9.
        ("h", ()): [[2, 2, 2], 0.5 + 1.0 + 5 + 10.0 + 11 + 1e9, 6],
    }
    assert sorted(d[1] for d in batch["defs"]) == ["c", "g", "h"]
    assert recorder.take_batch() is None  # sent once


# ============================================================================ the node's store
def test_user_metrics_accumulate_per_process_and_render():
    store = UserMetrics(100, LABELS)
    defs = [["counter", "c", "a counter", ["k"], []], ["gauge", "g", "", [], []],
            ["histogram", "h", "", [], [1.0, 10.0]]]
    store.report(b"\x01" * 16, {"defs": defs, "points": [["c", ["a"], 2.0], ["g", [], 5.0], ["h", [], [[1, 0, 1], 20.5, 2]]]})
    store.report(b"\x01" * 16, {"defs": defs, "points": [["c", ["a"], 3.0], ["g", [], 6.0], ["h", [], [[0, 1, 0], 2.0, 1]]]})
    store.report(b"\x02" * 16, {"defs": defs[:1], "points": [["c", ["a"], 7.0]]})
    body, content_type = metric_families.render(store.families())
    assert content_type.startswith("text/plain")
    samples = parse(body.decode())
    counters = select(samples, "ray_c_total", k="a", Component="core_worker", SessionName="session_x")
    assert {s.labels["WorkerId"]: s.value for s in counters} == {"01" * 16: 5.0, "02" * 16: 7.0}
    assert [s.value for s in select(samples, "ray_g")] == [6.0]
    buckets = {s.labels["le"]: s.value for s in select(samples, "ray_h_bucket")}
    assert buckets == {"1.0": 1.0, "10.0": 2.0, "+Inf": 3.0}
    assert [s.value for s in select(samples, "ray_h_sum")] == [22.5]
    assert [s.value for s in select(samples, "ray_h_count")] == [3.0]
    # OpenMetrics, when the scraper prefers it.
    body, content_type = metric_families.render(store.families(), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


def test_conflicting_definitions_and_too_many_series_are_dropped_and_counted():
    store = UserMetrics(3, LABELS)
    store.report(b"a", {"defs": [["counter", "x", "", [], []]], "points": [["x", [], 1.0]]})
    # Another process calls "x" a gauge: its records are dropped, the counter is untouched.
    store.report(b"b", {"defs": [["gauge", "x", "", [], []]], "points": [["x", [], 9.0]]})
    assert store.dropped == 1
    store.report(b"c", {"defs": [["counter", "y", "", ["k"], []]], "points": [["y", [str(i)], 1.0] for i in range(5)]})
    assert store.num_series == 3 and store.dropped == 1 + 3
    store.report(b"c", {"defs": [], "points": [["y", ["0"], 1.0], ["unknown", [], 1.0]]})
    samples = parse(metric_families.render(store.families())[0].decode())
    assert [s.value for s in select(samples, "ray_x_total")] == [1.0]
    assert sorted(s.value for s in select(samples, "ray_y_total")) == [1.0, 2.0]
    assert store.dropped == 5


def test_a_tag_named_like_a_standard_label_wins():
    store = UserMetrics(10, LABELS)
    store.report(b"a", {"defs": [["gauge", "g", "", ["Component"], []]], "points": [["g", ["mine"], 1.0]]})
    (sample,) = select(parse(metric_families.render(store.families())[0].decode()), "ray_g")
    assert sample.labels["Component"] == "mine" and sample.labels["NodeAddress"] == "127.0.0.1"


# ============================================================================ the metrics port
def _serve_and_request(requests: list[bytes]) -> list[bytes]:
    async def render(accept: str) -> tuple[bytes, str]:
        return b"ray_x 1.0\n", "text/plain; version=0.0.4"

    async def main() -> list[bytes]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        server = MetricsHttpServer(sock, render, request_timeout_s=0.5)
        await server.start()
        answers = []
        try:
            for raw in requests:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(raw)
                await writer.drain()
                answers.append(await asyncio.wait_for(reader.read(), 5))
                writer.close()
        finally:
            await server.stop()
        return answers

    return asyncio.run(main())


def test_metrics_port_answers_get_and_refuses_the_rest():
    ok, head, root, missing, post, garbage, oversized, silent = _serve_and_request([
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n",
        b"HEAD /metrics HTTP/1.1\r\n\r\n",
        b"GET /?x=1 HTTP/1.0\r\n\r\n",
        b"GET /../etc/passwd HTTP/1.1\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"\x00\x01garbage\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n",  # never finishes its head: closed after the timeout
    ])
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nray_x 1.0\n")
    assert b"Content-Type: text/plain; version=0.0.4" in ok
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n") and b"Content-Length: 10" in head
    assert root.startswith(b"HTTP/1.1 200 OK")
    assert missing.startswith(b"HTTP/1.1 404")
    assert post.startswith(b"HTTP/1.1 405")
    assert garbage.startswith(b"HTTP/1.1 400")
    assert oversized.startswith(b"HTTP/1.1 400")
    assert silent == b""


# ============================================================================ discovery
def test_discovery_lists_live_nodes_with_a_port(tmp_path):
    nodes = [
        {"NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 8080, "Alive": True},
        {"NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 8081, "Alive": False},
        {"NodeManagerAddress": "10.0.0.3", "MetricsExportPort": 0, "Alive": True},
    ]
    metrics_discovery.write_discovery(str(tmp_path), nodes)
    with open(tmp_path / metrics_discovery.DISCOVERY_FILE) as f:
        assert json.load(f) == [{"labels": {"job": "ray"}, "targets": ["10.0.0.1:8080"]}]
    metrics_discovery.write_prometheus_config(str(tmp_path))
    config = (tmp_path / "metrics" / "prometheus" / "prometheus.yml").read_text()
    assert str(tmp_path / metrics_discovery.DISCOVERY_FILE) in config and "file_sd_configs" in config
