"""init/shutdown, runtime context, cluster information, and the ``ember`` command."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap

import psutil
import pytest
from conftest import STORE_BYTES

import ember
from ember._private import runtime
from ember._private.processes import pid_alive
from ember._private.test_utils import free_port, wait_for_condition

MiB = 1024 * 1024


@ember.remote
def square(x):
    return x * x


# ============================================================================ init / shutdown
def test_init_twice_raises_unless_ignore_reinit_error(ember_local):
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        ember.init(num_cpus=1)
    ctx = ember.init(ignore_reinit_error=True)
    assert ctx["gcs_address"] == runtime.core_worker().gcs_address
    assert ember.get(square.remote(3)) == 9


def test_is_initialized_follows_init_and_shutdown(ember_start):
    assert not ember.is_initialized()
    ember_start(num_cpus=1)
    assert ember.is_initialized()
    ember.shutdown()
    assert not ember.is_initialized()
    ember.shutdown()  # a second shutdown is harmless
    assert not ember.is_initialized()


def test_api_without_a_cluster_says_to_call_init():
    from ember.exceptions import RaySystemError

    assert not ember.is_initialized()
    with pytest.raises(RaySystemError, match=r"ember\.init\(\)"):
        ember.nodes()
    with pytest.raises(RaySystemError, match=r"ember\.init\(\)"):
        ember.get_runtime_context()


def test_init_returns_context_usable_as_context_manager():
    with ember.init(num_cpus=1, object_store_memory=STORE_BYTES) as ctx:
        assert ember.is_initialized()
        assert ctx["node_id"] == ember.get_runtime_context().get_node_id()
        assert os.path.isdir(ctx["session_dir"])
        assert ember.get(square.remote(4)) == 16
    assert not ember.is_initialized()


def test_init_again_after_shutdown_gets_a_fresh_cluster(ember_start):
    ember_start(num_cpus=1)
    first = runtime.core_worker().session_dir
    ember.shutdown()
    ember_start(num_cpus=1)
    assert runtime.core_worker().session_dir != first
    assert ember.get(square.remote(5)) == 25


def test_node_and_resources_are_known_as_soon_as_init_returns(ember_start):
    # Ray programs often read cluster_resources() right after init; the node must be registered.
    for _ in range(3):
        ember_start(num_cpus=2, object_store_memory=64 * MiB)
        nodes = ember.nodes()
        assert [n["NodeID"] for n in nodes if n["Alive"]] == [ember.get_runtime_context().get_node_id()]
        assert ember.cluster_resources()["CPU"] == 2.0
        ember.shutdown()


def test_init_argument_errors():
    with pytest.raises(TypeError, match="no_such_argument"):
        ember.init(no_such_argument=1)
    with pytest.raises(ValueError, match="num_cpus"):
        ember.init(address="127.0.0.1:1", num_cpus=1)
    with pytest.raises(ValueError, match="num_cpus"):
        ember.init(num_cpus=-1)
    with pytest.raises(ValueError, match="num_gpus"):
        ember.init(resources={"GPU": 1})
    assert not ember.is_initialized()


def test_init_auto_without_a_running_cluster_raises_connection_error():
    with pytest.raises(ConnectionError, match="ember start --head"):
        ember.init(address="auto")
    assert not ember.is_initialized()


def test_init_with_an_unreachable_address_raises_connection_error(monkeypatch):
    monkeypatch.setenv("EMBER_CLUSTER_TOKEN", "x" * 48)
    port = free_port()
    with pytest.raises(ConnectionError, match=str(port)):
        ember.init(address=f"127.0.0.1:{port}")
    assert not ember.is_initialized()


# ============================================================================ runtime context and cluster info
def test_runtime_context_in_the_driver(ember_start):
    ember_start(num_cpus=2, object_store_memory=STORE_BYTES, namespace="test_namespace")
    ctx = ember.get_runtime_context()
    worker = runtime.core_worker()
    node_id = ctx.get_node_id()
    assert node_id == worker.node_id.hex() and len(node_id) == 32
    assert node_id == ember.nodes()[0]["NodeID"]
    job_id = ctx.get_job_id()
    assert len(job_id) == 8 and int(job_id, 16) >= 1
    assert ctx.get_task_id() is None
    assert len(ctx.get_worker_id()) == 32
    assert ctx.namespace == "test_namespace"
    assert ctx.gcs_address == worker.gcs_address
    assert ctx.get()["job_id"].hex() == job_id  # as Ray: get() gives id objects


def test_anonymous_namespace_by_default(ember_shared):
    namespace = ember.get_runtime_context().namespace
    assert namespace and namespace.startswith("anonymous")


def test_nodes_fields(ember_shared):
    nodes = ember.nodes()
    assert len(nodes) == 1
    node = nodes[0]
    for key in ("NodeID", "Alive", "NodeManagerAddress", "NodeManagerPort", "ObjectManagerPort", "Resources"):
        assert key in node, key
    assert node["Alive"] is True
    assert node["NodeManagerAddress"] == "127.0.0.1"
    assert f"127.0.0.1:{node['NodeManagerPort']}" == runtime.core_worker().raylet_address
    assert isinstance(node["ObjectManagerPort"], int) and node["ObjectManagerPort"] > 0
    assert node["Resources"]["CPU"] == 2.0
    assert node["Resources"]["object_store_memory"] == float(STORE_BYTES)
    assert node["Resources"]["node:127.0.0.1"] == 1.0


def test_cluster_and_available_resources(ember_shared, tmp_path):
    total = ember.cluster_resources()
    assert total["CPU"] == 2.0
    assert total["object_store_memory"] == float(STORE_BYTES)
    assert total["memory"] > 0
    assert "GPU" not in total
    wait_for_condition(lambda: ember.available_resources().get("CPU") == 2.0, timeout=10)

    @ember.remote(num_cpus=1)
    def hold(path):
        import time as _time

        open(path + ".started", "w").close()
        deadline = _time.monotonic() + 60
        while not os.path.exists(path) and _time.monotonic() < deadline:
            _time.sleep(0.005)

    gate = str(tmp_path / "gate")
    ref = hold.remote(gate)
    try:
        wait_for_condition(lambda: ember.available_resources().get("CPU") == 1.0, timeout=10)
    finally:
        open(gate, "w").close()
    ember.get(ref, timeout=30)
    wait_for_condition(lambda: ember.available_resources().get("CPU") == 2.0, timeout=10)


def test_custom_resources_and_gpus(ember_start):
    ember_start(num_cpus=1, num_gpus=1, resources={"custom": 3}, object_store_memory=64 * MiB)
    total = ember.cluster_resources()
    assert total["GPU"] == 1.0
    assert total["custom"] == 3.0
    assert total["object_store_memory"] == float(64 * MiB)

    @ember.remote(resources={"custom": 1.5})
    def uses_custom():
        return "ran"

    assert ember.get(uses_custom.remote(), timeout=30) == "ran"


# ============================================================================ the ember command
def _ember_cmd():
    script = os.path.join(os.path.dirname(sys.executable), "ember")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "ember.cli"]


def _run(args, env, timeout=60):
    return subprocess.run(_ember_cmd() + args, env=env, capture_output=True, text=True, timeout=timeout)


DRIVER = textwrap.dedent(
    """
    import os, sys
    import ember

    mode = sys.argv[1]
    if mode == "auto":
        ember.init(address="auto")
    else:
        ember.init()  # EMBER_ADDRESS names the cluster

    @ember.remote
    def hello(x):
        print("hello from the task", x)
        return x * 2

    class Tee:
        def __init__(self, inner):
            self.inner, self.text = inner, ""
        def write(self, s):
            self.text += s
            return self.inner.write(s)
        def flush(self):
            self.inner.flush()

    sys.stdout = tee = Tee(sys.stdout)
    assert ember.is_initialized()
    print("RESULT", ember.get([hello.remote(i) for i in range(3)], timeout=60))
    print("CPUS", ember.cluster_resources()["CPU"])
    from ember._private.test_utils import wait_for_condition
    wait_for_condition(lambda: "hello from the task 2" in tee.text, timeout=20)
    ember.shutdown()
    """
)


def _session_dirs(tmpdir):
    return [p for p in glob.glob(os.path.join(tmpdir, "session_*")) if not os.path.islink(p)]


def _session_pids(tmpdir):
    """pid files of every session started under ``tmpdir``."""
    pids = []
    for session_dir in _session_dirs(tmpdir):
        for path in glob.glob(os.path.join(session_dir, "pids", "*.pid")):
            with open(path) as f:
                pids.append(int(f.read().strip()))
    return pids


def _end_session_processes(tmpdir):
    """Kill, by pid, every daemon recorded under ``tmpdir`` and everything under them."""
    procs = []
    for pid in _session_pids(tmpdir):
        try:
            proc = psutil.Process(pid)
            procs += proc.children(recursive=True)
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    for session_dir in _session_dirs(tmpdir):
        for store in glob.glob(f"/dev/shm/ember_{os.path.basename(session_dir)}_*"):
            shutil.rmtree(store, ignore_errors=True)


@pytest.fixture
def cli_env(tmp_path):
    tmpdir = str(tmp_path / "ember_cli")
    env = dict(os.environ)
    env["EMBER_TMPDIR"] = tmpdir
    for key in ("EMBER_ADDRESS", "RAY_ADDRESS", "EMBER_CLUSTER_TOKEN"):
        env.pop(key, None)
    try:
        yield env
    finally:
        _end_session_processes(tmpdir)


def test_cli_start_driver_status_stop(cli_env, tmp_path):
    tmpdir = cli_env["EMBER_TMPDIR"]
    port = free_port()
    started = _run(["start", "--head", "--port", str(port), "--num-cpus", "1",
                    "--object-store-memory", str(64 * MiB)], cli_env)
    assert started.returncode == 0, started.stderr
    address = f"127.0.0.1:{port}"
    assert address in started.stdout

    sessions = _session_dirs(tmpdir)
    assert len(sessions) == 1
    session_dir = sessions[0]
    pids = _session_pids(tmpdir)  # control service, node daemon, HTTP server
    assert len(pids) == 3 and all(pid_alive(p) for p in pids)
    for pid in pids:  # the daemons listen on localhost only by default
        listening = [c.laddr for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert stat.S_IMODE(os.stat(os.path.join(session_dir, "token")).st_mode) == 0o600
    with open(os.path.join(tmpdir, "ember_current_cluster")) as f:
        assert json.load(f)["gcs_address"] == address
    assert not os.path.exists("/tmp/ember/ember_current_cluster") or \
        json.load(open("/tmp/ember/ember_current_cluster")).get("session_dir") != session_dir

    # A driver joins with EMBER_ADDRESS, another with address="auto".
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    for mode, extra in (("env", {"EMBER_ADDRESS": address}), ("auto", {})):
        result = subprocess.run([sys.executable, str(script), mode], env={**cli_env, **extra},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{mode}: {result.stdout}\n{result.stderr}"
        assert "RESULT [0, 2, 4]" in result.stdout, result.stdout
        assert "CPUS 1.0" in result.stdout
        assert "hello from the task" in result.stdout  # worker output reached this driver

    # A second node joins from this machine; its session's token file is private too.
    joined = _run(["start", "--address", address, "--num-cpus", "1", "--object-store-memory", str(64 * MiB)], cli_env)
    assert joined.returncode == 0, joined.stderr
    assert f"joined {address}" in joined.stdout
    sessions = _session_dirs(tmpdir)
    assert len(sessions) == 2
    join_dir = next(s for s in sessions if s != session_dir)
    assert stat.S_IMODE(os.stat(os.path.join(join_dir, "token")).st_mode) == 0o600
    pids = _session_pids(tmpdir)
    assert len(pids) == 4

    status = _run(["status"], cli_env)
    assert status.returncode == 0, status.stderr
    assert "2 alive" in status.stdout
    assert address in status.stdout
    assert "CPU" in status.stdout
    assert "object_store_memory" in status.stdout
    assert "Object store:" in status.stdout and "128.0 MiB" in status.stdout
    assert "0 / 2 CPU" in status.stdout

    stopped = _run(["stop"], cli_env)
    assert stopped.returncode == 0, stopped.stderr
    assert "Stopped 4" in stopped.stdout
    wait_for_condition(lambda: not any(pid_alive(p) for p in pids), timeout=15)
    assert not os.path.exists(os.path.join(tmpdir, "ember_current_cluster"))
    for s_dir in (session_dir, join_dir):
        assert not glob.glob(f"/dev/shm/ember_{os.path.basename(s_dir)}_*")

    after = _run(["status"], cli_env)
    assert after.returncode != 0
    assert "No running cluster" in after.stderr


def test_cli_start_on_a_busy_port_fails_cleanly(cli_env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(["start", "--head", "--port", str(port), "--num-cpus", "1"], cli_env)
    assert result.returncode != 0
    assert "cannot listen" in result.stderr
    assert _session_pids(cli_env["EMBER_TMPDIR"]) == []


def test_cli_start_needs_head_or_address(cli_env):
    result = _run(["start"], cli_env)
    assert result.returncode != 0
    assert "--head" in result.stderr


def test_cli_stop_with_nothing_running(cli_env):
    result = _run(["stop"], cli_env)
    assert result.returncode == 0
    assert "No running Ember processes" in result.stdout


# ============================================================================ daemon and driver deaths
def _daemon_pids():
    from ember.api import init as init_module

    return {name: proc.pid for name, proc in init_module._local_nodes.procs}


def _worker_pids():
    return {w["pid"] for w in runtime.core_worker().raylet_call("get_info", None)["workers"]}


def test_workers_do_not_outlive_a_killed_node_daemon(ember_start):
    from ember.exceptions import RayError

    ember_start(num_cpus=2)
    assert ember.get(square.remote(2)) == 4
    workers = _worker_pids()
    store_dir = runtime.core_worker().store_dir
    assert workers
    os.kill(_daemon_pids()["raylet"], signal.SIGKILL)
    wait_for_condition(lambda: not any(pid_alive(p) for p in workers), timeout=15)
    # The driver notices instead of hanging.
    with pytest.raises(RayError):
        ember.get(square.remote(3), timeout=30)
    ember.shutdown()
    assert not os.path.exists(store_dir)  # shutdown cleans up what the dead daemon left


def test_node_daemon_death_is_reported_with_a_public_error(ember_start):
    from ember.exceptions import RpcError

    ember_start(num_cpus=1)
    os.kill(_daemon_pids()["raylet"], signal.SIGKILL)
    with pytest.raises(Exception) as info:
        ember.get(square.remote(3), timeout=30)
    assert not isinstance(info.value, RpcError), repr(info.value)


def test_control_service_that_never_comes_back_stops_the_node(ember_start, monkeypatch, request):
    from ember._private.config import reset_config
    from ember.exceptions import RayError

    # Daemons wait this long for a restarted control service before giving up.
    monkeypatch.setenv("EMBER_gcs_reconnect_timeout_s", "2")
    reset_config()
    request.addfinalizer(reset_config)
    ember_start(num_cpus=1)
    assert ember.get(square.remote(2)) == 4
    daemons = _daemon_pids()
    store_dir = runtime.core_worker().store_dir
    os.kill(daemons["gcs"], signal.SIGKILL)
    # The node daemon stops itself once the control service stays away past the timeout.
    wait_for_condition(lambda: not pid_alive(daemons["raylet"]), timeout=20)
    with pytest.raises(RayError):
        ember.nodes()
    ember.shutdown()
    assert not os.path.exists(store_dir)


KILLED_DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    import ember
    from ember._private import runtime
    from ember.api import init as init_module

    ember.init(num_cpus=1, object_store_memory=64 * 1024 * 1024)

    @ember.remote
    def f():
        return os.getpid()

    ember.get(f.remote())
    ember.put(b"x" * (1024 * 1024))  # something in the object store
    worker = runtime.core_worker()
    info = {
        "daemons": [p.pid for _, p in init_module._local_nodes.procs],
        "workers": [w["pid"] for w in worker.raylet_call("get_info", None)["workers"]],
        "store_dir": worker.store_dir,
    }
    with open(sys.argv[1] + ".tmp", "w") as out:
        json.dump(info, out)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(300)  # until the test kills this driver
    """
)


def test_daemons_started_by_init_exit_when_the_driver_is_killed(tmp_path):
    from ember._private.test_utils import wait_for_file

    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    info_path = str(tmp_path / "info.json")
    env = dict(os.environ, EMBER_TMPDIR=str(tmp_path / "ember"))
    driver = subprocess.Popen([sys.executable, str(script), info_path], env=env)
    pids = []
    try:
        info = json.loads(wait_for_file(info_path, timeout=60))
        pids = info["daemons"] + info["workers"]
        assert all(pid_alive(p) for p in pids)
        driver.kill()
        driver.wait(10)
        wait_for_condition(lambda: not any(pid_alive(p) for p in pids), timeout=20)
        wait_for_condition(lambda: not os.path.exists(info["store_dir"]), timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
        procs = []
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        _end_session_processes(str(tmp_path / "ember"))
