"""A new user's first run: the README's steps, the CLI's small answers, quiet logs.

What a first-time user meets before their first result: the README's set-up
commands, ``ember --version``, ``ember microbenchmark --filter`` with a typo, the
Ray comparison without Ray, a failed ``ember start``, and the logs of a normal
run (no WARNING for a node stopped on purpose, no "killed by signal 9" for an
idle worker the node daemon retired), and a shutdown while frees, lease requests and
calls are in flight (no error, warning or traceback from the driver or any daemon).
"""

from __future__ import annotations

import ast
import glob
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest
from cli_cluster import cli_env, ember_cli, end_everything, session_dirs

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


# ----------------------------------------------------------------------------- README
def test_readme_creates_a_virtualenv_before_the_two_commands():
    readme = _read(os.path.join(ROOT, "README.md"))
    venv = readme.find("python3 -m venv .venv && . .venv/bin/activate")
    install = readme.find("python3 -m pip install -e . && python3 examples/pi.py")
    suite = readme.find("tests/setup.sh && python3 -m pytest -q")
    assert venv != -1, "the README does not create a virtual environment"
    assert install != -1 and suite != -1, "the README's two commands changed form"
    assert venv < install < suite
    # It says how long the suite takes, so a first run is not mistaken for a hang.
    assert re.search(r"takes about \d+ minutes on 2 (quiet )?cores", readme)


# ----------------------------------------------------------------------------- CLI answers
def test_ember_version(tmp_path):
    proc = ember_cli(["--version"], cli_env(str(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ember {ember.__version__}"


def test_microbenchmark_filter_without_a_match_says_so_and_fails(tmp_path):
    proc = ember_cli(["microbenchmark", "--filter", "no such workload"], cli_env(str(tmp_path)))
    assert proc.returncode != 0
    assert "no benchmark name contains 'no such workload'" in proc.stderr
    assert "single client tasks sync" in proc.stderr  # the names to choose from
    assert "Traceback" not in proc.stderr
    assert session_dirs(str(tmp_path)) == []  # no cluster was started for nothing


def test_a_missing_bytecode_cache_is_named_by_the_start_up_benchmark(tmp_path, monkeypatch):
    """Start-up measured without Ember's bytecode cache says so, with the command that writes it."""
    import importlib.util

    import ember.core.worker  # noqa: F401  (the module it probes, imported before sys.flags is replaced)
    from ember.bench import microbenchmark

    monkeypatch.setattr(sys, "flags", type("Flags", (), {"dont_write_bytecode": True})())
    monkeypatch.setattr(importlib.util, "cache_from_source", lambda source: str(tmp_path / "missing.pyc"))
    note = microbenchmark.missing_bytecode_cache()
    assert "no bytecode cache" in note and "python3 -m compileall -q" in note and note.rstrip().endswith("writes it")
    monkeypatch.setattr(importlib.util, "cache_from_source", lambda source: __file__)  # a file that exists
    assert microbenchmark.missing_bytecode_cache() == ""


@pytest.mark.parametrize("ray_python", ["/nonexistent/bin/python", sys.executable])
def test_compare_with_ray_without_ray_is_one_line(tmp_path, ray_python):
    script = os.path.join(ROOT, "benchmarks", "compare_with_ray.py")
    env = cli_env(str(tmp_path))
    env.pop("EMBER_RAY_PYTHON", None)
    proc = subprocess.run([sys.executable, script, "--ray-python", ray_python], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--ray-python" in lines[0] and ray_python in lines[0]


# ----------------------------------------------------------------------------- failed starts
def test_failed_ember_start_leaves_no_session_folder(tmp_path):
    tmpdir = str(tmp_path)
    env = cli_env(tmpdir)
    # An earlier session that session_latest points at, which a failed start must not move.
    earlier = os.path.join(tmpdir, "session_earlier")
    os.makedirs(earlier)
    os.symlink(earlier, os.path.join(tmpdir, "session_latest"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = ember_cli(["start", "--head", "--port", str(port), "--num-cpus", "1"], env)
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert session_dirs(tmpdir) == [earlier]
    assert os.readlink(os.path.join(tmpdir, "session_latest")) == earlier


def test_failed_ember_start_joining_leaves_no_session_folder(tmp_path):
    tmpdir = str(tmp_path)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        proc = ember_cli(["start", "--address", f"127.0.0.1:{port}", "--token", "x" * 48],
                         cli_env(tmpdir, EMBER_connect_timeout_s="1"))
    assert proc.returncode != 0
    assert "cannot reach the control service" in proc.stderr
    assert session_dirs(tmpdir) == []
    assert not os.path.lexists(os.path.join(tmpdir, "session_latest"))


def test_init_with_bad_arguments_leaves_no_session_folder(ember_start, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_TMPDIR", str(tmp_path))
    with pytest.raises(ValueError):
        ember_start(num_cpus=-1)
    assert session_dirs(str(tmp_path)) == []
    assert not os.path.lexists(os.path.join(str(tmp_path), "session_latest"))


# ----------------------------------------------------------------------------- quiet logs
def _daemon_logs(session_dir: str) -> str:
    paths = glob.glob(os.path.join(session_dir, "logs", "gcs_server*.log"))
    paths += glob.glob(os.path.join(session_dir, "logs", "raylet-*.log"))
    assert paths
    return "".join(_read(p) for p in paths)


def test_normal_run_logs_no_warning_and_no_signal_9(ember_start, monkeypatch):
    # Retire surplus idle workers quickly, so the run includes a reaped idle worker.
    monkeypatch.setenv("EMBER_idle_worker_kill_s", "0.2")
    ember_start(num_cpus=1)
    session_dir = runtime.core_worker().session_dir

    @ember.remote
    def leaf(i):
        return i

    @ember.remote
    def parent(i):
        # Blocked in get, this task lends its CPU: the node starts a worker beyond the pool's size.
        return ember.get(leaf.remote(i)) + 1

    assert ember.get([parent.remote(i) for i in range(3)], timeout=60) == [1, 2, 3]
    wait_for_condition(lambda: "beyond the pool's size" in _daemon_logs(session_dir), timeout=30)
    ember.shutdown()
    logs = _daemon_logs(session_dir)
    assert " WARNING " not in logs and " ERROR " not in logs, logs
    assert "signal 9" not in logs, logs
    assert "is dead: its node daemon was stopped" in logs


# Right before shutdown: values dropped while tasks still make them (frees in flight, to this
# node and, in a cluster, to the other one), tasks of many shapes and SPREAD tasks (lease
# requests and spillbacks in flight), actor calls in flight. The driver logs at INFO with the
# level in each line, so any warning of the runtime's own shows.
BUSY_SHUTDOWN_DRIVER = """
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s driver %(name)s: %(message)s")
    import numpy as np
    import ember
    from ember.cluster_utils import Cluster

    @ember.remote
    def make(i):
        return np.full(300 * 1024, i, dtype=np.uint32)  # 1.2 MiB: in the object store

    @ember.remote
    def tiny(i):
        return i

    @ember.remote
    class Echo:
        def f(self, x):
            return x

    cluster = None
    if {multinode}:
        cluster = Cluster(initialize_head=False, shutdown_at_exit=False)
        cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        cluster.add_node(num_cpus=2, object_store_memory=100 * 2**20, resources={{"far": 10}})
        cluster.connect()
        far = [make.options(resources={{"far": 0.1}}).remote(i) for i in range(20)]
    else:
        ember.init(num_cpus=2, object_store_memory=100 * 2**20)
        far = []
    try:
        near = [make.remote(i) for i in range(20)]
        echo = Echo.remote()
        assert ember.get(echo.f.remote(0)) == 0
        ember.get(near[:2] + far[:2])
        pending = [tiny.options(num_cpus=0.01 * (k + 1)).remote(k) for k in range(10)]
        spread = [tiny.options(scheduling_strategy="SPREAD").remote(k) for k in range(10)]
        calls = [echo.f.remote(k) for k in range(10)]
        puts = [ember.put(np.ones(300 * 1024, dtype=np.uint32)) for _ in range(5)]
        del near, far, puts
        ember.shutdown()
    finally:
        if cluster is not None:
            cluster.shutdown()
    print("clean exit")
"""

NOISE = re.compile(r"Traceback|Exception in callback| WARNING | ERROR |CRITICAL")


@pytest.mark.parametrize("multinode", [False, True], ids=["init", "cluster"])
def test_shutdown_with_frees_and_leases_in_flight_is_quiet(tmp_path, multinode):
    tmpdir = str(tmp_path / "ember_tmp")
    env = cli_env(tmpdir)
    code = textwrap.dedent(BUSY_SHUTDOWN_DRIVER).format(multinode=multinode)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        end_everything(tmpdir, [proc])
    assert proc.returncode == 0 and "clean exit" in out, out + err
    assert not NOISE.search(err), err
    (session_dir,) = session_dirs(tmpdir)
    for path in sorted(glob.glob(os.path.join(session_dir, "logs", "*"))):
        if path.endswith((".log", ".err")):
            text = _read(path)
            assert not NOISE.search(text), f"{os.path.basename(path)}:\n{text}"


# ----------------------------------------------------------------------------- quiet pytest
def test_no_test_prints_past_pytests_capture():
    """``pytest -q`` shows only pytest's lines: no test writes around the capture."""
    offenders = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "*.py"))):
        tree = ast.parse(_read(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and (
                node.attr in ("disabled", "__stdout__", "__stderr__") or
                (node.attr == "write" and isinstance(node.value, ast.Name) and node.value.id == "os")
            ):
                offenders.append(f"{os.path.basename(path)}:{node.lineno} uses .{node.attr}")
    assert offenders == [], "print figures (captured, shown by -rA) or record_property instead: " + "; ".join(offenders)
