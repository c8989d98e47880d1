"""Named actors, namespaces, get_actor / get_if_exists, and detached lifetimes across drivers."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import ember
from ember._private.test_utils import free_port, wait_for_condition


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@ember.remote
class Box:
    def __init__(self, value=0):
        self.value = value

    def incr(self):
        self.value += 1
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()


# ============================================================================ namespaces and names
def test_init_namespace_scopes_named_actors(ember_start):
    ember_start(namespace="team_a")
    assert ember.get_runtime_context().namespace == "team_a"
    a = Box.options(name="shared_name").remote(1)
    assert ember.get(a.get.remote()) == 1
    # Found by name in this job's namespace, and by naming the namespace.
    assert ember.get(ember.get_actor("shared_name").get.remote()) == 1
    assert ember.get(ember.get_actor("shared_name", namespace="team_a").get.remote()) == 1
    with pytest.raises(ValueError, match="team_b"):
        ember.get_actor("shared_name", namespace="team_b")
    ember.kill(a)


def test_names_are_unique_per_namespace(ember_shared):
    a = Box.options(name="unique", namespace="ns1").remote(1)
    ember.get(a.__ray_ready__.remote())
    with pytest.raises(ValueError, match="unique"):
        Box.options(name="unique", namespace="ns1").remote(2)
    # The same name in another namespace is a different actor.
    b = Box.options(name="unique", namespace="ns2").remote(2)
    assert ember.get(ember.get_actor("unique", namespace="ns1").get.remote()) == 1
    assert ember.get(ember.get_actor("unique", namespace="ns2").get.remote()) == 2
    assert ember.get_actor("unique", namespace="ns1") != ember.get_actor("unique", namespace="ns2")
    # The failed creation did not disturb the first actor.
    assert ember.get(a.incr.remote()) == 2
    ember.kill(a)
    ember.kill(b)


def test_get_actor_with_unknown_name_raises_value_error(ember_shared):
    with pytest.raises(ValueError, match="never_created"):
        ember.get_actor("never_created")
    with pytest.raises(ValueError):
        ember.get_actor("")


def test_get_if_exists_returns_the_existing_actor(ember_shared):
    first = Box.options(name="singleton", namespace="gie", get_if_exists=True).remote(10)
    assert ember.get(first.incr.remote()) == 11
    # Constructor arguments of the second call are ignored: it is the same actor.
    second = Box.options(name="singleton", namespace="gie", get_if_exists=True).remote(99)
    assert second == first
    assert ember.get(second.incr.remote()) == 12
    assert ember.get(first.pid.remote()) == ember.get(second.pid.remote())
    ember.kill(first)


def test_name_is_free_again_after_the_actor_dies(ember_shared):
    a = Box.options(name="reborn", namespace="reuse").remote(1)
    pid = ember.get(a.pid.remote())
    ember.kill(a)
    with pytest.raises(ValueError):
        ember.get_actor("reborn", namespace="reuse")
    b = Box.options(name="reborn", namespace="reuse").remote(2)
    assert ember.get(ember.get_actor("reborn", namespace="reuse").get.remote()) == 2
    assert ember.get(b.pid.remote()) != pid
    ember.kill(b)


def test_named_actor_found_from_a_task(ember_shared):
    a = Box.options(name="from_task", namespace="tasks").remote(5)
    ember.get(a.__ray_ready__.remote())

    @ember.remote
    def use(name):
        return ember.get(ember.get_actor(name, namespace="tasks").incr.remote())

    assert ember.get(use.remote("from_task")) == 6
    assert ember.get(a.get.remote()) == 6
    ember.kill(a)


# ============================================================================ across drivers (ember start)
def _ember_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from ember.cli import main; main()", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def _session_pids(tmpdir: str) -> set[int]:
    pids: set[int] = set()
    for path in glob.glob(os.path.join(tmpdir, "session_*", "pids", "*.pid")):
        try:
            with open(path) as f:
                pids.add(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    try:
        with open(os.path.join(tmpdir, "ember_started.json")) as f:
            for entry in json.load(f):
                pids.update(int(p) for p in entry.get("pids", {}).values())
    except (OSError, ValueError):
        pass
    return pids


def _with_descendants(pids: set[int]) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs[pid] = proc
            for child in proc.children(recursive=True):
                procs[child.pid] = child
        except psutil.Error:
            pass
    return list(procs.values())


@pytest.fixture
def ember_head(tmp_path) -> Iterator[dict[str, Any]]:
    """A head started with ``ember start --head`` (its own EMBER_TMPDIR); stopped and ended by pid afterwards."""
    tmpdir = str(tmp_path / "ember_cli")
    os.makedirs(tmpdir)
    env = dict(os.environ)
    env["EMBER_TMPDIR"] = tmpdir
    env.pop("EMBER_ADDRESS", None)
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    started = None
    try:
        started = _ember_cli(["start", "--head", "--port", str(port), "--num-cpus", "2"], env)
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"env": env, "address": f"127.0.0.1:{port}", "tmpdir": tmpdir}
    finally:
        procs = _with_descendants(_session_pids(tmpdir))  # before stop: workers are still attached
        try:
            _ember_cli(["stop"], env)
        finally:
            for proc in procs:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=10)
            for proc in procs:
                try:
                    os.waitpid(proc.pid, os.WNOHANG)  # we may be their subreaper
                except (ChildProcessError, OSError):
                    pass


def _run_driver(code: str, env: dict[str, str], timeout: float = 60) -> dict[str, Any]:
    """Run a driver program in its own process; it prints one JSON line with its results."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"driver failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"driver printed no result:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1])


CREATE_DRIVER = """
    import json, os
    import ember

    ember.init(address="auto", namespace="lifetimes")

    @ember.remote
    class Keeper:
        def __init__(self):
            self.value = 0

        def incr(self):
            self.value += 1
            return self.value

        def pid(self):
            return os.getpid()

    detached = Keeper.options(name="keeper", lifetime="detached").remote()
    attached = Keeper.options(name="attached").remote()
    print(json.dumps({
        "detached_pid": ember.get(detached.pid.remote()),
        "detached_value": ember.get(detached.incr.remote()),
        "attached_pid": ember.get(attached.pid.remote()),
    }))
"""

REUSE_DRIVER = """
    import json
    import ember

    ember.init({init_args})
    out = {{}}
    keeper = ember.get_actor("keeper", namespace="lifetimes")
    out["pid"] = ember.get(keeper.pid.remote())
    out["value"] = ember.get(keeper.incr.remote())
    try:
        ember.get_actor("attached", namespace="lifetimes")
        out["attached"] = "found"
    except ValueError as exc:
        out["attached"] = "missing: " + str(exc)
    if {kill}:
        ember.kill(keeper)
    print(json.dumps(out))
"""


def test_detached_actor_outlives_its_driver(ember_head):
    env = ember_head["env"]
    created = _run_driver(CREATE_DRIVER, env)
    assert created["detached_value"] == 1
    # The non-detached named actor ends with its driver's job ...
    wait_for_condition(lambda: pid_gone(created["attached_pid"]), timeout=20)
    # ... the detached one does not.
    assert not pid_gone(created["detached_pid"])

    again = _run_driver(REUSE_DRIVER.format(init_args='address="auto"', kill=False), env)
    assert again["pid"] == created["detached_pid"]
    assert again["value"] == 2  # the same actor, with its state
    assert again["attached"].startswith("missing")

    # A third driver finds the cluster through EMBER_ADDRESS, and kills the actor.
    env_with_address = {**env, "EMBER_ADDRESS": ember_head["address"]}
    last = _run_driver(REUSE_DRIVER.format(init_args="", kill=True), env_with_address)
    assert last["pid"] == created["detached_pid"]
    assert last["value"] == 3
    wait_for_condition(lambda: pid_gone(created["detached_pid"]), timeout=20)
