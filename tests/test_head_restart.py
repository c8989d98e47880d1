"""The head's control service can crash and come back without losing the cluster.

A head is started with ``ember start --head`` (SQLite in the session folder, or
Redis with ``--storage redis://``), a second node joins with ``ember start
--address``, and a driver runs tasks and a named detached actor. The control
service is SIGKILLed (pid from the session's ``pids/gcs.pid``); while it is
down, running tasks complete, the existing actor answers, and an actor creation
asked for during the outage waits. It is restarted from
``gcs_restart_args.json``; then every acknowledged write (actor, KV, exported
functions) is there again, nodes rejoin, new work runs.

A node whose recorded cluster id differs from the restarted control service's
(restarted on a fresh storage) refuses to rejoin, says why in its log and exits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import psutil
import pytest
from cli_cluster import (
    cli_env,
    ember_cli,
    end_everything,
    kill_gcs,
    read_pid,
    restart_gcs,
    session_dirs,
    with_descendants,
)

import ember
from ember._private import runtime
from ember._private.processes import pid_alive
from ember._private.test_utils import free_port, wait_for_condition
from ember.rpc.sync_client import gcs_request

MiB = 1024 * 1024
REJOINED = "rejoined the control service"


# ============================================================================ Redis (optional backend)
@pytest.fixture(scope="session")
def redis_server_binary() -> str:
    """The redis-server program; installed with apt-get when missing and we are root, else skip."""
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis Python client is missing (pip install -e '.[test]' installs it)")
    path = shutil.which("redis-server")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("redis-server is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"]
    outputs = []
    for cmd in (install, ["apt-get", "update", "-q"], install):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"could not install redis-server with apt-get: {exc}")
        outputs.append(done.stdout[-500:] + done.stderr[-500:])
        if cmd is install and done.returncode == 0 and shutil.which("redis-server"):
            return shutil.which("redis-server")  # type: ignore[return-value]
    pytest.skip("could not install redis-server with apt-get: " + " | ".join(outputs)[-1000:])


@pytest.fixture
def redis_url(redis_server_binary: str, tmp_path: Any) -> Any:
    """A redis-server owned by this test, on a free port; ended by pid afterwards."""
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        wait_for_condition(client.ping, timeout=15)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


# ============================================================================ helpers
def _start_head(env: dict[str, str], port: int, storage: str | None = None) -> str:
    args = ["start", "--head", "--port", str(port), "--num-cpus", "2", "--object-store-memory", str(128 * MiB)]
    if storage:
        args += ["--storage", storage]
    started = ember_cli(args, env)
    assert started.returncode == 0, started.stdout + started.stderr
    (session_dir,) = [d for d in session_dirs(env["EMBER_TMPDIR"]) if os.path.exists(os.path.join(d, "gcs_restart_args.json"))]
    return session_dir


def _raylet_logs(tmpdir: str) -> list[str]:
    import glob

    return sorted(p for d in session_dirs(tmpdir) for p in glob.glob(os.path.join(d, "logs", "raylet-*.log")))


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


class _StdoutRecorder:
    """sys.stdout that also keeps what was written (the driver's I/O thread prints there)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ============================================================================ tests
@pytest.mark.parametrize("storage", ["sqlite", "redis"])
def test_control_service_restart_keeps_the_cluster(storage, tmp_path, monkeypatch, request):
    storage_url = request.getfixturevalue("redis_url") if storage == "redis" else None
    tmpdir = str(tmp_path / "cluster")
    env = cli_env(tmpdir, EMBER_node_death_timeout_s="10")
    monkeypatch.setenv("EMBER_TMPDIR", tmpdir)  # ember.init(address="auto") finds the head there
    restarted: subprocess.Popen[bytes] | None = None
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        session_dir = _start_head(env, port, storage_url)
        joined = ember_cli(["start", "--address", address, "--num-cpus", "1",
                            "--object-store-memory", str(64 * MiB)], env)
        assert joined.returncode == 0, joined.stdout + joined.stderr
        raylet_logs = _raylet_logs(tmpdir)
        assert len(raylet_logs) == 2

        printed = _StdoutRecorder(sys.stdout)
        monkeypatch.setattr(sys, "stdout", printed)  # where the driver prints workers' lines
        ember.init(address="auto")
        worker = runtime.core_worker()
        token = worker.token
        marks = tmp_path / "marks"
        marks.mkdir()

        @ember.remote(max_retries=0)
        def running(path, release):
            with open(path, "w") as f:
                f.write("started")
            deadline = time.monotonic() + 60
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.01)  # until the test lets it finish (after the control service died)
            print(f"printed during the outage by {os.path.basename(path)}", flush=True)
            return os.path.basename(path)

        @ember.remote
        class Counter:
            def __init__(self, start):
                self.value = start

            def incr(self):
                self.value += 1
                return self.value

        counter = Counter.options(name="counter", namespace="restart", lifetime="detached").remote(10)
        assert ember.get(counter.incr.remote(), timeout=30) == 11
        worker.gcs_call("kv_put", {"ns": "test", "key": b"acknowledged", "value": b"before the crash"})
        exported = sorted(worker.gcs_call("kv_keys", {"ns": "fn", "prefix": b""}))
        assert exported  # running() and Counter were exported to the function table
        release = str(marks / "release")
        tasks = [running.remote(str(marks / f"task{i}"), release) for i in range(2)]
        wait_for_condition(lambda: all((marks / f"task{i}").exists() for i in range(2)), timeout=30)
        rejoined_before = [_read(p).count(REJOINED) for p in raylet_logs]

        # ---------------------------------------------------------------- the control service dies
        kill_gcs(session_dir)
        (marks / "release").write_text("go")
        assert sorted(ember.get(tasks, timeout=30)) == ["task0", "task1"]  # running tasks complete
        assert ember.get(counter.incr.remote(), timeout=30) == 12  # the existing actor answers

        created: dict[str, Any] = {}

        def create_during_outage() -> None:
            try:
                late = Counter.options(name="late", namespace="restart", lifetime="detached").remote(100)
                created["value"] = ember.get(late.incr.remote(), timeout=60)
            except BaseException as exc:  # reported by the main thread
                created["error"] = exc

        creator = threading.Thread(target=create_during_outage, daemon=True)
        creator.start()
        creator.join(1.0)  # observing that it waits, not synchronising
        assert creator.is_alive() and not created, created  # the creation waits for the control service

        # ---------------------------------------------------------------- restart
        t0 = time.monotonic()
        restarted = restart_gcs(session_dir, env)
        wait_for_condition(lambda: gcs_request(address, token, "ping", timeout=1.0) == "pong", timeout=30)
        accepting = time.monotonic() - t0

        def all_rejoined() -> bool:
            return all(_read(p).count(REJOINED) > n for p, n in zip(raylet_logs, rejoined_before))

        wait_for_condition(all_rejoined, timeout=30, retry_interval_ms=5)
        reconnected = time.monotonic() - t0
        print(f"\n[{storage}] control service restart -> accepting connections {accepting:.2f}s, "
              f"all {len(raylet_logs)} nodes reconnected {reconnected:.2f}s")
        request.node.user_properties.append(("restart_to_all_nodes_reconnected_s", round(reconnected, 3)))
        assert read_pid(os.path.join(session_dir, "pids", "gcs.pid")) == restarted.pid

        # What tasks printed while the control service was down reaches the driver afterwards.
        wait_for_condition(lambda: all(f"printed during the outage by task{i}" in printed.text for i in range(2)),
                           timeout=30)
        creator.join(60)
        assert not creator.is_alive(), "the actor asked for during the outage was never created"
        assert created == {"value": 101}, created

        again = ember.get_actor("counter", namespace="restart")
        assert ember.get(again.incr.remote(), timeout=30) == 13  # same actor, state intact
        nodes = ember.nodes()
        assert len(nodes) == 2 and all(n["Alive"] for n in nodes), nodes
        assert worker.gcs_call("kv_get", {"ns": "test", "key": b"acknowledged"}) == b"before the crash"
        assert set(exported) <= set(worker.gcs_call("kv_keys", {"ns": "fn", "prefix": b""}))

        @ember.remote
        def square(x):
            return x * x

        assert ember.get([square.remote(i) for i in range(20)], timeout=60) == [i * i for i in range(20)]
        assert ember.cluster_resources()["CPU"] == 3
        for name in ("counter", "late"):
            ember.kill(ember.get_actor(name, namespace="restart"))
    finally:
        if ember.is_initialized():
            ember.shutdown()
        end_everything(tmpdir, [restarted] if restarted is not None else [])


def test_node_of_another_cluster_refuses_to_rejoin(tmp_path):
    """Restarted on a fresh storage, the control service runs another cluster: the node must not join it."""
    tmpdir = str(tmp_path / "cluster")
    env = cli_env(tmpdir, EMBER_node_death_timeout_s="10")
    restarted: subprocess.Popen[bytes] | None = None
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        session_dir = _start_head(env, port)
        token = open(os.path.join(session_dir, "token")).read().strip()
        (raylet_log,) = _raylet_logs(tmpdir)
        raylet_pid = next(
            read_pid(os.path.join(session_dir, "pids", name))
            for name in os.listdir(os.path.join(session_dir, "pids")) if name.startswith("raylet")
        )
        workers = [p for p in with_descendants([raylet_pid]) if p.pid != raylet_pid]
        assert workers  # prestarted workers (and the fork server)
        old_id = gcs_request(address, token, "cluster_info")["cluster_id"]

        kill_gcs(session_dir)
        restarted = restart_gcs(session_dir, env, storage=f"sqlite:///{tmp_path / 'another.sqlite'}")
        wait_for_condition(lambda: gcs_request(address, token, "ping", timeout=1.0) == "pong", timeout=30)
        new_id = gcs_request(address, token, "cluster_info")["cluster_id"]
        assert new_id != old_id

        # The node tries to rejoin, is refused, says why, and exits with its workers.
        wait_for_condition(lambda: not pid_alive(raylet_pid), timeout=30)
        text = _read(raylet_log)
        assert "the control service refused this node" in text, text[-3000:]
        assert f"this node belongs to cluster {old_id}" in text and new_id in text, text[-3000:]
        wait_for_condition(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers),
                           timeout=20)
        assert [n for n in gcs_request(address, token, "get_nodes") if n["Alive"]] == []
    finally:
        end_everything(tmpdir, [restarted] if restarted is not None else [])
