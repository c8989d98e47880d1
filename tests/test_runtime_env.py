"""Runtime environments on real clusters: env_vars, working_dir, py_modules, pip, failures.

The pip tests run without the internet: they build a tiny wheel here and
install it with ``--no-index --find-links``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

import ember
from ember._private.config import reset_config
from ember.cluster_utils import Cluster
from ember.exceptions import RuntimeEnvSetupError
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ember.remote
def getenv(name: str) -> str | None:
    return os.environ.get(name)


@ember.remote
def where() -> dict[str, Any]:
    import sys

    return {"cwd": os.getcwd(), "files": sorted(os.listdir(".")), "python": sys.executable, "pid": os.getpid()}


@ember.remote
def import_value(module: str) -> Any:
    import importlib

    return importlib.import_module(module).VALUE


@ember.remote
def can_import(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def build_wheel(folder: str, name: str = "ember_tiny_pkg", version: str = "1.0", value: str = "tiny") -> str:
    """A pure-Python wheel written by hand (no build tools, no network)."""
    files = {
        f"{name}/__init__.py": f"VALUE = {value!r}\n".encode(),
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: ember-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as zf:
        for inner, data in files.items():
            zf.writestr(inner, data)
    return path


def own_cluster_needed() -> None:
    """A test with a Cluster of its own: the module's shared cluster stops first (the next shared test restarts it)."""
    from conftest import _shared, _stop_shared

    if _shared:
        _stop_shared()


def offline_pip(wheels: str, *packages: str) -> dict[str, Any]:
    return {"pip": {"packages": list(packages), "pip_install_options": ["--no-index", "--find-links", wheels]}}


# ============================================================================ env_vars
def test_env_vars_reach_only_their_task(ember_shared: Any) -> None:
    with_x = getenv.options(runtime_env={"env_vars": {"EMBER_TEST_X": "1"}})
    refs = [with_x.remote("EMBER_TEST_X"), getenv.remote("EMBER_TEST_X")]
    assert ember.get(refs) == ["1", None]
    # Pooled per env: the env's worker is reused, and the default one never gets X.
    assert ember.get([with_x.remote("EMBER_TEST_X") for _ in range(4)]) == ["1"] * 4
    assert ember.get([getenv.remote("EMBER_TEST_X") for _ in range(4)]) == [None] * 4

    @ember.remote(runtime_env={"env_vars": {"DECORATED": "yes"}})
    def decorated() -> str | None:
        return os.environ.get("DECORATED")

    assert ember.get(decorated.remote()) == "yes"
    assert ember.get(decorated.options(runtime_env={"env_vars": {"DECORATED": "no"}}).remote()) == "no"


def test_actor_env_vars_and_nested_inheritance(ember_shared: Any) -> None:
    @ember.remote
    class Probe:
        def get(self, name: str) -> str | None:
            return os.environ.get(name)

        def child(self, name: str) -> Any:
            # A task started by this actor inherits its env, merged with the child's own.
            own = getenv.options(runtime_env={"env_vars": {"CHILD": "c"}})
            return ember.get([getenv.remote(name), own.remote(name), own.remote("CHILD")])

    probe = Probe.options(runtime_env={"env_vars": {"ACTOR_VAR": "a"}}).remote()
    plain = Probe.remote()
    assert ember.get(probe.get.remote("ACTOR_VAR")) == "a"
    assert ember.get(plain.get.remote("ACTOR_VAR")) is None
    assert ember.get(probe.child.remote("ACTOR_VAR")) == ["a", "a", "c"]
    ember.kill(probe)
    ember.kill(plain)


def test_malformed_env_raises_at_options(ember_shared: Any) -> None:
    with pytest.raises(ValueError, match="'not_a_key'"):
        getenv.options(runtime_env={"not_a_key": 1})
    with pytest.raises(ValueError, match="'env_vars'"):
        getenv.options(runtime_env={"env_vars": {"X": 1}})

    class Plain:
        pass

    with pytest.raises(ValueError, match="'pip'"):
        ember.remote(Plain).options(runtime_env={"pip": 42})
    with pytest.raises(ValueError, match="'working_dir'"):
        getenv.options(runtime_env={"working_dir": "/no/such/folder/for/ember"})
    with pytest.raises(ValueError, match="'env_vars'"):
        ember.remote(runtime_env={"env_vars": ["X"]})(lambda: None)


def test_job_env_vars_merge_with_task_env_vars(ember_start: Any) -> None:
    ember_start(num_cpus=2, runtime_env={"env_vars": {"JOB_A": "job", "SHARED": "job"}})
    assert ember.get(getenv.remote("JOB_A")) == "job"
    task = getenv.options(runtime_env={"env_vars": {"SHARED": "task", "TASK_B": "task"}})
    assert ember.get([task.remote("JOB_A"), task.remote("SHARED"), task.remote("TASK_B")]) == ["job", "task", "task"]
    assert ember.get(getenv.remote("SHARED")) == "job"


def test_submitted_job_env_merges_with_init(ember_start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_JOB_RUNTIME_ENV", '{"env_vars": {"FROM_JOB": "j"}}')
    ember_start(num_cpus=2, runtime_env={"env_vars": {"FROM_INIT": "i"}})
    assert ember.get([getenv.remote("FROM_JOB"), getenv.remote("FROM_INIT")]) == ["j", "i"]


# ============================================================================ working_dir and py_modules
@pytest.fixture
def two_nodes() -> Iterator[Cluster]:
    """A head and a second node, one CPU each, and this driver connected."""
    own_cluster_needed()
    os.environ["EMBER_resource_report_period_s"] = "0.1"
    reset_config()
    cluster = Cluster(initialize_head=False, shutdown_at_exit=False)
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024)
        cluster.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024)
        cluster.wait_for_nodes()
        cluster.connect()
        yield cluster
    finally:
        ember.shutdown()
        cluster.shutdown()
        os.environ.pop("EMBER_resource_report_period_s", None)
        reset_config()


def _on(node: Any) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node.node_id, soft=False)


def test_working_dir_imports_on_two_nodes(two_nodes: Cluster, tmp_path: Any) -> None:
    wd = tmp_path / "project"
    (wd / "data").mkdir(parents=True)
    (wd / "wd_module_renv.py").write_text("VALUE = 'from working_dir'\n")
    (wd / "data" / "big.bin").write_bytes(b"x" * 1000)
    (wd / "notes.tmp").write_text("x")
    (wd / ".gitignore").write_text("*.tmp\n")
    env = {"working_dir": str(wd), "excludes": ["data/"]}
    nodes = [two_nodes.head_node, *two_nodes.worker_nodes]
    values = ember.get([import_value.options(runtime_env=env, scheduling_strategy=_on(n)).remote("wd_module_renv") for n in nodes])
    assert values == ["from working_dir"] * 2
    places = ember.get([where.options(runtime_env=env, scheduling_strategy=_on(n)).remote() for n in nodes])
    for place in places:
        assert place["files"] == [".gitignore", "wd_module_renv.py"]  # excludes and .gitignore honoured
        assert "runtime_resources" in place["cwd"]
    assert not ember.get(can_import.remote("wd_module_renv"))  # default workers never see it


def test_job_working_dir_and_concurrent_pip_setup_on_two_nodes(two_nodes: Cluster, tmp_path: Any) -> None:
    # Many tasks on two nodes of one machine ask for the same virtualenv at once: built once.
    wheels = str(tmp_path / "wheels")
    build_wheel(wheels, value="shared")
    env = offline_pip(wheels, "ember_tiny_pkg")
    nodes = [two_nodes.head_node, *two_nodes.worker_nodes]
    refs = [where.options(runtime_env=env, scheduling_strategy=_on(n)).remote() for n in nodes for _ in range(3)]
    pythons = {info["python"] for info in ember.get(refs, timeout=120)}
    assert len(pythons) == 1 and "/venvs/" in next(iter(pythons))
    log = next(iter(pythons)).rsplit("/bin/", 1)[0] + ".log"
    assert sum(line.startswith("$ ") and " install " in line for line in open(log)) == 1

    # A job-level working_dir (init(runtime_env=)) applies to every task of the job.
    wd = tmp_path / "job_wd"
    wd.mkdir()
    (wd / "job_wd_module_renv.py").write_text("VALUE = 'job level'\n")
    ember.shutdown()
    ember.init(address=two_nodes.address, _token=two_nodes.token, runtime_env={"working_dir": str(wd)})
    assert ember.get([import_value.options(scheduling_strategy=_on(n)).remote("job_wd_module_renv") for n in nodes]) == ["job level"] * 2
    # A task's own env_vars keep the job's working_dir (merged); its own working_dir replaces it.
    merged = import_value.options(runtime_env={"env_vars": {"A": "1"}})
    assert ember.get(merged.remote("job_wd_module_renv")) == "job level"
    other = tmp_path / "other_wd"
    other.mkdir()
    assert ember.get(can_import.options(runtime_env={"working_dir": str(other)}).remote("job_wd_module_renv")) is False


def test_py_modules_folder_and_wheel(two_nodes: Cluster, tmp_path: Any) -> None:
    package = tmp_path / "mods" / "renv_pkg_mod"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 'package'\n")
    wheel = build_wheel(str(tmp_path / "wheels"), name="renv_wheel_mod", value="wheel")
    env = {"py_modules": [str(package), wheel]}
    assert ember.get(import_value.options(runtime_env=env).remote("renv_pkg_mod")) == "package"
    assert ember.get(import_value.options(runtime_env=env).remote("renv_wheel_mod")) == "wheel"
    assert ember.get(can_import.remote("renv_pkg_mod")) is False


def test_remote_zip_uri_and_zip_slip(two_nodes: Cluster, tmp_path: Any) -> None:
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("project/uri_mod_renv.py", "VALUE = 'from uri'\n")
    env = {"working_dir": f"file://{good}"}
    assert ember.get(import_value.options(runtime_env=env).remote("uri_mod_renv")) == "from uri"

    evil = tmp_path / "evil.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ok.py", "")
        info = zipfile.ZipInfo("../../escaped_by_zip_slip.py")
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        zf.writestr(info, "pwned = True\n")
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(RuntimeEnvSetupError, match="escapes its folder"):
        ember.get(where.options(runtime_env={"working_dir": f"file://{evil}"}).remote())
    # A local zip is checked before upload.
    with pytest.raises(ValueError, match="escapes its folder"):
        ember.get(where.options(runtime_env={"working_dir": str(evil)}).remote())
    with pytest.raises(RuntimeEnvSetupError, match="does not exist"):
        ember.get(where.options(runtime_env={"working_dir": f"file://{tmp_path}/missing.zip"}).remote())
    assert ember.get(getenv.remote("HOME")) is not None  # the node is fine


# ============================================================================ pip
@pytest.fixture
def pip_cluster() -> Iterator[Cluster]:
    own_cluster_needed()
    cluster = Cluster(initialize_head=False, shutdown_at_exit=False)  # registered before any process starts
    try:
        cluster.add_node(num_cpus=2, object_store_memory=100 * 1024 * 1024)
        cluster.connect()
        yield cluster
    finally:
        ember.shutdown()
        cluster.shutdown()


def test_pip_package_in_one_task_only_and_reused_by_a_second_job(pip_cluster: Cluster, tmp_path: Any) -> None:
    wheels = str(tmp_path / "wheels")
    build_wheel(wheels, value="installed")
    env = offline_pip(wheels, "ember_tiny_pkg")
    started = time.monotonic()
    assert ember.get(import_value.options(runtime_env=env).remote("ember_tiny_pkg")) == "installed"
    first = time.monotonic() - started
    info = ember.get(where.options(runtime_env=env).remote())
    assert "/venvs/" in info["python"]
    assert ember.get(can_import.remote("ember_tiny_pkg")) is False

    # A second job (a new driver on the same cluster) starts without installing again, even in a
    # new worker (other env_vars: another worker pool, the same virtualenv).
    marker = os.path.join(info["python"].rsplit("/bin/", 1)[0], ".ember_ready")
    built_at = os.stat(marker).st_mtime_ns
    ember.shutdown()
    pip_cluster.connect()
    started = time.monotonic()
    again = {**env, "env_vars": {"SECOND_JOB": "1"}}
    assert ember.get(import_value.options(runtime_env=again).remote("ember_tiny_pkg")) == "installed"
    second = time.monotonic() - started
    assert ember.get(where.options(runtime_env=again).remote())["python"] == info["python"]
    assert os.stat(marker).st_mtime_ns == built_at, "the second job built the virtualenv again"
    print(f"\npip env: first task {first:.2f}s (virtualenv built), second job's first task {second:.2f}s (reused, new worker)")


def test_bad_package_fails_that_task_only(pip_cluster: Cluster, tmp_path: Any) -> None:
    wheels = str(tmp_path / "wheels")
    os.makedirs(wheels)
    bad = where.options(runtime_env=offline_pip(wheels, "ember_no_such_package_zz"))
    started = time.monotonic()
    with pytest.raises(RuntimeEnvSetupError) as info:
        ember.get(bad.remote(), timeout=120)
    assert "ember_no_such_package_zz" in str(info.value).replace("-", "_")
    assert "installer output" in str(info.value)
    print(f"\nbad package reported after {time.monotonic() - started:.2f}s")

    @ember.remote
    class Needy:
        def ping(self) -> str:
            return "pong"

    actor = Needy.options(runtime_env=offline_pip(wheels, "ember_no_such_package_zz")).remote()
    with pytest.raises(RuntimeEnvSetupError, match="runtime_env could not be set up"):
        ember.get(actor.ping.remote(), timeout=120)
    assert ember.get(getenv.remote("HOME")) is not None  # others keep running


def test_unused_env_files_are_removed(ember_start: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name, value in {"EMBER_runtime_env_unused_ttl_s": "1", "EMBER_runtime_env_gc_period_s": "0.2",
                        "EMBER_idle_worker_kill_s": "0.3"}.items():
        monkeypatch.setenv(name, value)
    reset_config()
    try:
        wd = tmp_path / "short_lived"
        wd.mkdir()
        (wd / "marker.txt").write_text("x")
        ember_start(num_cpus=1)
        place = ember.get(where.options(runtime_env={"working_dir": str(wd)}).remote())
        assert place["files"] == ["marker.txt"]
        from ember._private.test_utils import wait_for_condition

        # Its worker is reaped when idle, then the env is released and its folder removed.
        wait_for_condition(lambda: not os.path.exists(place["cwd"]), timeout=30)
        # Used again later: unpacked again.
        assert ember.get(where.options(runtime_env={"working_dir": str(wd)}).remote())["files"] == ["marker.txt"]
    finally:
        monkeypatch.undo()
        reset_config()


def test_startup_variables_get_a_fresh_interpreter(ember_shared: Any) -> None:
    @ember.remote
    def hash_randomization() -> int:
        import sys

        return sys.flags.hash_randomization

    # Python reads PYTHONHASHSEED only when it starts: the worker is a new interpreter, not a fork.
    default = ember.get(hash_randomization.remote())
    seed = "0" if default else "random"
    assert ember.get(hash_randomization.options(runtime_env={"env_vars": {"PYTHONHASHSEED": seed}}).remote()) == 1 - default


def test_full_pool_makes_room_for_another_env(ember_start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_max_workers", "2")
    reset_config()
    try:
        ember_start(num_cpus=2)  # two prestarted default workers fill the pool
        assert ember.get([getenv.remote("HOME") for _ in range(4)]) == [os.environ["HOME"]] * 4
        envs = [{"env_vars": {"POOL_ENV": str(i)}} for i in range(3)]
        assert ember.get([getenv.options(runtime_env=e).remote("POOL_ENV") for e in envs], timeout=60) == ["0", "1", "2"]
        assert ember.get(getenv.remote("POOL_ENV"), timeout=60) is None
    finally:
        monkeypatch.undo()
        reset_config()


def test_pip_without_uv(pip_cluster_no_uv: Cluster, tmp_path: Any) -> None:
    wheels = str(tmp_path / "wheels")
    build_wheel(wheels, name="ember_tiny_pip_only", value="pip")
    started = time.monotonic()
    info = ember.get(where.options(runtime_env=offline_pip(wheels, "ember_tiny_pip_only")).remote(), timeout=180)
    value = ember.get(import_value.options(runtime_env=offline_pip(wheels, "ember_tiny_pip_only")).remote("ember_tiny_pip_only"))
    assert value == "pip"
    log = info["python"].rsplit("/bin/", 1)[0] + ".log"
    assert " -m pip " in open(log).read() and "uv venv" not in open(log).read()
    print(f"\nvenv + pip (no uv): {time.monotonic() - started:.2f}s")


@pytest.fixture
def pip_cluster_no_uv(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    own_cluster_needed()
    monkeypatch.setenv("EMBER_runtime_env_use_uv", "0")
    reset_config()
    cluster = Cluster(initialize_head=False, shutdown_at_exit=False)  # registered before any process starts
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024)
        cluster.connect()
        yield cluster
    finally:
        ember.shutdown()
        cluster.shutdown()
        monkeypatch.undo()
        reset_config()


def test_setup_timeout_ends_a_stuck_install(pip_cluster: Cluster) -> None:
    import socket

    # An index that accepts connections and never answers: the installer hangs until the timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        index = f"http://127.0.0.1:{silent.getsockname()[1]}/simple"
        env = {"pip": {"packages": ["ember_never_answered"], "pip_install_options": ["--index-url", index]},
               "config": {"setup_timeout_seconds": 2}}
        started = time.monotonic()
        with pytest.raises(RuntimeEnvSetupError, match="setup timeout"):
            ember.get(where.options(runtime_env=env).remote(), timeout=120)
        assert time.monotonic() - started < 60


def test_py_executable(ember_shared: Any, tmp_path: Any) -> None:
    import sys

    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f"#!/bin/sh\nexport WRAPPED_BY=wrapper\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    assert ember.get(getenv.options(runtime_env={"py_executable": str(wrapper)}).remote("WRAPPED_BY")) == "wrapper"

    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'this interpreter is broken' >&2\nexit 3\n")
    broken.chmod(0o755)
    # Its workers die before they start: after a few tries the task fails with their output.
    with pytest.raises(RuntimeEnvSetupError, match="this interpreter is broken"):
        ember.get(getenv.options(runtime_env={"py_executable": str(broken)}).remote("X"), timeout=60)
    with pytest.raises(RuntimeEnvSetupError, match="not an executable"):
        ember.get(getenv.options(runtime_env={"py_executable": str(tmp_path / "missing")}).remote("X"), timeout=60)
    assert ember.get(getenv.remote("WRAPPED_BY")) is None


def test_job_env_is_installed_eagerly_at_init(pip_cluster: Cluster, tmp_path: Any) -> None:
    import glob

    from ember._private import runtime
    from ember._private.test_utils import wait_for_condition

    wheels = str(tmp_path / "wheels")
    build_wheel(wheels, name="ember_eager_pkg", value="eager")
    ember.shutdown()
    ember.init(address=pip_cluster.address, _token=pip_cluster.token, runtime_env=offline_pip(wheels, "ember_eager_pkg"))
    venvs = os.path.join(runtime.core_worker().session_dir, "runtime_resources", "venvs", "*", ".ember_ready")
    # Built before any task asks for it.
    wait_for_condition(lambda: len(glob.glob(venvs)) == 1, timeout=60)
    assert ember.get(import_value.remote("ember_eager_pkg")) == "eager"


def test_malformed_env_in_a_lease_request_is_refused(ember_shared: Any) -> None:
    from ember._private import runtime
    from ember.exceptions import ErrorCode, RemoteError

    worker = runtime.core_worker()
    # A wrongly shaped env is refused by the protocol's decoder, naming the field; a
    # well-shaped but meaningless one (an empty key) by the runtime-env check.
    cases = [
        (5, ErrorCode.PROTOCOL_ERROR, "$.renv"),
        (["key"], ErrorCode.PROTOCOL_ERROR, "$.renv"),
        (["key", "not a dict"], ErrorCode.PROTOCOL_ERROR, "$.renv[1]"),
        (["", {}], ErrorCode.BAD_REQUEST, "bad runtime env"),
    ]
    for number, (bad, code, reason) in enumerate(cases):
        with pytest.raises(RemoteError) as info:
            worker.raylet_call("request_lease", {"request_id": 90_000 + number, "resources": {"CPU": 1}, "renv": bad})
        assert info.value.code is code and reason in info.value.message, info.value
        with pytest.raises(RemoteError) as info:
            worker.raylet_call("prepare_runtime_env", bad)
        assert info.value.code is code, info.value
    assert ember.get(getenv.options(runtime_env={"env_vars": {"STILL": "fine"}}).remote("STILL")) == "fine"


def test_packages_of_finished_jobs_are_removed_from_the_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    import subprocess
    import sys

    from ember._private import runtime
    from ember._private.test_utils import wait_for_condition
    from ember.runtime_env.package_store import package_working_dir

    own_cluster_needed()
    monkeypatch.setenv("EMBER_runtime_env_package_grace_s", "0")
    reset_config()
    cluster = Cluster(initialize_head=False, shutdown_at_exit=False)  # registered before any process starts
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024)
        folders = {}
        for name in ("first", "second"):
            folders[name] = tmp_path / name
            folders[name].mkdir()
            (folders[name] / f"{name}_mod_renv.py").write_text(f"VALUE = {name!r}\n")
        uris = {name: package_working_dir(str(path))[0] for name, path in folders.items()}

        def stored(uri: str) -> bool:
            return runtime.core_worker().gcs_call("kv_get", {"ns": "runtime_env", "key": uri.encode()}) is not None

        cluster.connect()
        assert ember.get(import_value.options(runtime_env={"working_dir": str(folders["first"])}).remote("first_mod_renv")) == "first"
        assert stored(uris["first"])
        ember.shutdown()  # the first job ends: nothing uses its package any more
        cluster.connect()
        wait_for_condition(lambda: not stored(uris["first"]), timeout=20)
        assert ember.get(import_value.options(runtime_env={"working_dir": str(folders["second"])}).remote("second_mod_renv")) == "second"
        # Another job ending does not remove what a running job uses.
        subprocess.run([sys.executable, "-c", f"import ember; ember.init(address={cluster.address!r}, _token={cluster.token!r}); ember.shutdown()"],
                       check=True, timeout=60)
        me = runtime.core_worker().job_id

        def others_finished() -> bool:
            jobs = runtime.core_worker().gcs_call("get_jobs", None)
            return len(jobs) == 3 and all(j["status"] != "RUNNING" for j in jobs if j["job_id"] != me)

        wait_for_condition(others_finished, timeout=20)
        assert stored(uris["second"])
        assert ember.get(import_value.options(runtime_env={"working_dir": str(folders["second"])}).remote("second_mod_renv")) == "second"
    finally:
        ember.shutdown()
        cluster.shutdown()
        monkeypatch.undo()
        reset_config()


def _hook_sets_a_variable() -> None:
    os.environ["HOOKED"] = "by callable"


def _hook_that_fails() -> None:
    raise RuntimeError("the setup hook went boom")


def test_worker_process_setup_hook(ember_shared: Any, tmp_path: Any) -> None:
    assert ember.get(getenv.options(runtime_env={"worker_process_setup_hook": _hook_sets_a_variable}).remote("HOOKED")) == "by callable"
    assert ember.get(getenv.remote("HOOKED")) is None
    wd = tmp_path / "hooks"
    wd.mkdir()
    (wd / "hookmod_renv.py").write_text("import os\n\ndef setup():\n    os.environ['HOOKED'] = 'by name'\n")
    env = {"working_dir": str(wd), "worker_process_setup_hook": "hookmod_renv.setup"}
    assert ember.get(getenv.options(runtime_env=env).remote("HOOKED")) == "by name"
    with pytest.raises(RuntimeEnvSetupError, match="went boom"):
        ember.get(getenv.options(runtime_env={"worker_process_setup_hook": _hook_that_fails}).remote("HOOKED"), timeout=60)
    with pytest.raises(ValueError, match="worker_process_setup_hook"):
        getenv.options(runtime_env={"worker_process_setup_hook": 42})


def test_uv_field(pip_cluster: Cluster, tmp_path: Any) -> None:
    wheels = str(tmp_path / "wheels")
    build_wheel(wheels, name="ember_uv_pkg", value="via uv")
    env = {"uv": {"packages": ["ember_uv_pkg"], "uv_pip_install_options": ["--no-index", "--find-links", wheels]}}
    assert ember.get(import_value.options(runtime_env=env).remote("ember_uv_pkg")) == "via uv"
    assert ember.get(can_import.remote("ember_uv_pkg")) is False


def test_runtime_context_shows_the_env(ember_shared: Any) -> None:
    @ember.remote
    def context_env() -> tuple[dict[str, Any], str]:
        ctx = ember.get_runtime_context()
        return dict(ctx.runtime_env), ctx.get_runtime_env_string()

    env, text = ember.get(context_env.options(runtime_env={"env_vars": {"CTX": "1"}}).remote())
    assert env == {"env_vars": {"CTX": "1"}} and '"CTX": "1"' in text
    assert ember.get(context_env.remote())[0] == {}
    assert dict(ember.get_runtime_context().runtime_env) == {}
