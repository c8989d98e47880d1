"""The head's HTTP server: its own process, the cluster token, Ray's routes, discovery, lifetime."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
from cli_cluster import cli_env, ember_cli, end_everything, read_pid, session_dirs
from http_helpers import http, session_token

import ember
from ember._private import runtime, session
from ember._private.processes import pid_alive
from ember._private.test_utils import wait_for_condition


@pytest.fixture
def dash(ember_start):
    """A local cluster with its HTTP server on a free port: (url, token, session_dir)."""
    ctx = ember_start(include_dashboard=True, dashboard_port=0)
    url = ctx.dashboard_url
    assert url and url.startswith("127.0.0.1:")
    session_dir = ctx["session_dir"]
    wait_for_condition(lambda: http(url, "/api/gcs_healthz").status == 200, timeout=20)
    return url, session_token(session_dir), session_dir


def test_health_checks_are_open(dash):
    url, _token, _ = dash
    reply = http(url, "/api/gcs_healthz")
    assert (reply.status, reply.text) == (200, "success")
    assert http(url, "/api/local_raylet_healthz").text == "success"
    assert http(url, "/api/authentication_mode").json() == {"authentication_mode": "token"}


@pytest.mark.parametrize("path", ["/api/version", "/api/cluster_status", "/api/no/such/route"])
def test_routes_need_the_token(dash, path):
    url, token, _ = dash
    assert http(url, path).status == 401
    wrong = http(url, path, token="x" * len(token))
    assert wrong.status == 401 and "wrong cluster token" in wrong.text
    ok = http(url, path, token=token)
    assert ok.status == (404 if "no/such" in path else 200)
    assert http(url, path, headers={"X-Ray-Authorization": f"Bearer {token}"}).status == ok.status


def test_version_and_cluster_status(dash):
    url, token, session_dir = dash
    version = http(url, "/api/version", token=token).json()
    assert version["version"] == "4" and version["ember_version"] == ember.__version__
    assert version["session_name"] == os.path.basename(session_dir)
    status = http(url, "/api/cluster_status", token=token).json()
    assert status["result"] is True
    report = status["data"]["clusterStatus"]
    assert report["loadMetricsReport"]["usage"]["CPU"] == [0.0, 2.0]
    assert report["autoscalerReport"]["activeNodes"] == {"node": 1}
    assert "0/2 CPU" in status["data"]["autoscalingStatus"]
    formatted = http(url, "/api/cluster_status?format=1", token=token).json()
    assert "Active:" in formatted["data"]["clusterStatus"]


def test_malformed_query_is_400_with_a_reason(dash):
    url, token, _ = dash
    reply = http(url, "/api/cluster_status?format=yes", token=token)
    assert reply.status == 400 and "'format' must be one of 0, 1" in reply.text
    # Without the token, the token check answers first: bad input reveals nothing.
    assert http(url, "/api/cluster_status?format=yes").status == 401


def test_cookie_login(dash):
    url, token, _ = dash
    denied = http(url, "/login?token=nope")
    assert denied.status == 401 and "Set-Cookie" not in denied.headers
    assert http(url, "/login").status == 400
    login = http(url, "/login?token=" + token + "&next=/api/version")
    assert login.status == 302 and login.headers["Location"] == "/api/version"
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    pair = cookie.split(";", 1)[0]
    assert http(url, "/api/version", headers={"Cookie": pair}).status == 200
    assert http(url, "/api/version", headers={"Cookie": "ray-authentication-token=bad"}).status == 401
    # Redirects stay on this server.
    assert http(url, f"/login?token={token}&next=//evil.example/").headers["Location"] == "/"
    # Ray's way: POST /api/authenticate with the header sets the same cookie.
    posted = http(url, "/api/authenticate", method="POST", token=token)
    assert posted.status == 200 and "ray-authentication-token=" in posted.headers["Set-Cookie"]


def test_url_is_discoverable(dash):
    url, _token, session_dir = dash
    assert session.read_dashboard_url(session_dir) == url
    worker = runtime.core_worker()
    wait_for_condition(lambda: worker.gcs_call("cluster_info", None)["dashboard_url"] == url)


def test_server_ends_with_the_cluster_and_its_crash_spares_tasks(ember_start):
    ctx = ember_start(include_dashboard=True, dashboard_port=0)
    session_dir = ctx["session_dir"]
    pid = read_pid(os.path.join(session_dir, "pids", "dashboard.pid"))
    wait_for_condition(lambda: http(ctx.dashboard_url, "/api/gcs_healthz").status == 200, timeout=20)

    @ember.remote
    def double(x):
        return 2 * x

    os.kill(pid, signal.SIGKILL)
    wait_for_condition(lambda: not pid_alive(pid))
    assert ember.get([double.remote(i) for i in range(20)]) == [2 * i for i in range(20)]
    ember.shutdown()

    ctx = ember_start(include_dashboard=True, dashboard_port=0)
    pid = read_pid(os.path.join(ctx["session_dir"], "pids", "dashboard.pid"))
    assert pid_alive(pid)
    ember.shutdown()
    assert not pid_alive(pid)


def test_taken_port_moves_to_the_next_free_one(ember_start):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        ctx = ember_start(include_dashboard=True, dashboard_port=taken)
        port = int(ctx.dashboard_url.rsplit(":", 1)[1])
        assert port > taken
        wait_for_condition(lambda: http(ctx.dashboard_url, "/api/gcs_healthz").status == 200, timeout=20)


def test_no_dashboard_when_excluded(ember_start):
    ctx = ember_start(include_dashboard=False)
    assert ctx.dashboard_url is None
    assert not os.path.exists(os.path.join(ctx["session_dir"], "pids", "dashboard.pid"))


def test_ember_start_head_serves_and_restarts_with_the_head(tmp_path):
    """``ember start --head`` prints the URL; a restarted control service brings back a dead server."""
    env = cli_env(str(tmp_path / "cluster"))
    try:
        started = ember_cli(["start", "--head", "--port", "0", "--num-cpus", "1", "--dashboard-port", "0",
                             "--object-store-memory", str(64 * 1024 * 1024)], env)
        assert started.returncode == 0, started.stdout + started.stderr
        (session_dir,) = session_dirs(env["EMBER_TMPDIR"])
        url = session.read_dashboard_url(session_dir)
        assert f"View the dashboard at http://{url}" in started.stdout
        token = session_token(session_dir)
        wait_for_condition(lambda: http(url, "/api/version", token=token).status == 200, timeout=20)
        pids = os.path.join(session_dir, "pids")
        gcs_pid, dash_pid = read_pid(os.path.join(pids, "gcs.pid")), read_pid(os.path.join(pids, "dashboard.pid"))
        os.kill(dash_pid, signal.SIGKILL)
        os.kill(gcs_pid, signal.SIGKILL)
        wait_for_condition(lambda: not pid_alive(dash_pid) and not pid_alive(gcs_pid))
        import subprocess
        import sys

        with open(os.path.join(session_dir, "gcs_restart_args.json")) as f:
            args = json.load(f)
        log = open(os.path.join(session_dir, "logs", "gcs_restarted.log"), "ab")
        try:
            subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        finally:
            log.close()
        wait_for_condition(lambda: read_pid(os.path.join(pids, "dashboard.pid")) != dash_pid, timeout=20)
        wait_for_condition(lambda: http(url, "/api/gcs_healthz").text == "success", timeout=30)
        stopped = ember_cli(["stop"], env)
        assert stopped.returncode == 0, stopped.stderr
        assert not pid_alive(read_pid(os.path.join(pids, "dashboard.pid")))
    finally:
        end_everything(env["EMBER_TMPDIR"])
