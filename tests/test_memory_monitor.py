"""The memory monitor: its pure parts, its cgroup readers, and the real thing in a memory-limited cgroup.

The end-to-end test needs root and a writable cgroup memory controller (v2 or
v1): it creates a cgroup with a 1 GiB limit, starts a head inside it (a small
wrapper writes its own pid into ``cgroup.procs`` and then execs ``ember start
--head``), and runs 20 tasks that each allocate half the limit. The monitor must
end workers before the kernel's OOM killer acts, the tasks are retried, and all
finish.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytest
from cli_cluster import cli_env, end_everything, log_text, session_dirs, session_pids

import ember
from ember._private.processes import pid_alive
from ember._private.test_utils import free_port, wait_for_condition
from ember.raylet import memory_monitor as mm
from ember.raylet.memory_monitor import Candidate, MemorySnapshot, choose_victim

MiB = 1024 * 1024
GiB = 1024 * MiB


# ============================================================================ choose_victim
def test_choose_victim_prefers_retriable_work_then_the_newest_lease():
    assert choose_victim([]) is None
    old_retriable = Candidate(b"a", True, 1.0)
    new_retriable = Candidate(b"b", True, 5.0)
    newest_fixed = Candidate(b"c", False, 9.0)
    assert choose_victim([old_retriable, newest_fixed, new_retriable]) is new_retriable
    assert choose_victim([newest_fixed, old_retriable]) is old_retriable  # retriable first, even if older
    # Only non-retriable work left: the newest lease, so the oldest work keeps its progress.
    old_fixed = Candidate(b"d", False, 2.0)
    assert choose_victim([old_fixed, newest_fixed]) is newest_fixed
    assert choose_victim([old_fixed]) is old_fixed


def test_snapshot_fraction():
    assert MemorySnapshot(50, 200).fraction == 0.25
    assert MemorySnapshot(50, 0).fraction == 0.0


# ============================================================================ readers on fake trees
def _write(path: Any, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_tree(tmp_path, monkeypatch):
    """Point the readers at ``tmp_path``: /proc/self/cgroup, /sys/fs/cgroup and /proc/meminfo."""
    root = tmp_path / "sys_fs_cgroup"
    root.mkdir()
    proc_cgroup = tmp_path / "proc_self_cgroup"
    meminfo = tmp_path / "meminfo"
    _write(meminfo, "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n")
    monkeypatch.setattr(mm, "PROC_SELF_CGROUP", str(proc_cgroup))
    monkeypatch.setattr(mm, "CGROUP_ROOT", str(root))
    monkeypatch.setattr(mm, "PROC_MEMINFO", str(meminfo))
    return root, proc_cgroup


def test_reader_without_limits_uses_meminfo(fake_tree):
    root, proc_cgroup = fake_tree
    _write(proc_cgroup, "0::/\n")
    _write(root / "memory.current", "123\n")  # the root cgroup has no memory.max
    assert mm.read_memory() == MemorySnapshot(750 * 1024, 1000 * 1024)
    _write(root / "a" / "memory.max", "max\n")
    _write(root / "a" / "memory.current", "10\n")
    _write(proc_cgroup, "0::/a\n")
    assert mm.read_memory() == MemorySnapshot(750 * 1024, 1000 * 1024)


def test_reader_cgroup_v2_own_limit(fake_tree):
    root, proc_cgroup = fake_tree
    _write(proc_cgroup, "0::/a/b\n")
    _write(root / "a" / "b" / "memory.max", "1000\n")
    _write(root / "a" / "b" / "memory.current", "800\n")
    _write(root / "a" / "b" / "memory.stat", "anon 600\ninactive_file 100\nactive_file 50\n")
    assert mm.read_memory() == MemorySnapshot(700, 1000)


def test_reader_cgroup_v2_limit_of_an_ancestor(fake_tree):
    """A limit set on a parent cgroup (systemd slices, containers) applies to us too."""
    root, proc_cgroup = fake_tree
    _write(proc_cgroup, "0::/slice/service\n")
    _write(root / "slice" / "service" / "memory.max", "max\n")
    _write(root / "slice" / "service" / "memory.current", "300\n")
    _write(root / "slice" / "memory.max", "2000\n")
    _write(root / "slice" / "memory.current", "1500\n")
    _write(root / "slice" / "memory.stat", "inactive_file 500\n")
    assert mm.read_memory() == MemorySnapshot(1000, 2000)
    # With limits at both levels, the one with less room left is the one that bites.
    _write(root / "slice" / "service" / "memory.max", "400\n")
    assert mm.read_memory() == MemorySnapshot(300, 400)


def test_reader_cgroup_v2_on_a_hybrid_mount(fake_tree):
    root, proc_cgroup = fake_tree
    _write(proc_cgroup, "4:memory:/\n0::/job\n")
    _write(root / "unified" / "job" / "memory.max", "4096\n")
    _write(root / "unified" / "job" / "memory.current", "1024\n")
    assert mm.read_memory() == MemorySnapshot(1024, 4096)


def test_reader_cgroup_v1_own_cgroup(fake_tree):
    root, proc_cgroup = fake_tree
    _write(proc_cgroup, "5:cpu,cpuacct:/\n4:memory:/jobs/one\n0::/\n")
    v1 = root / "memory"
    _write(v1 / "memory.limit_in_bytes", "9223372036854771712\n")  # the mount's root: unlimited
    _write(v1 / "memory.usage_in_bytes", "999999\n")
    _write(v1 / "jobs" / "one" / "memory.limit_in_bytes", "2000\n")
    _write(v1 / "jobs" / "one" / "memory.usage_in_bytes", "1500\n")
    _write(v1 / "jobs" / "one" / "memory.stat",
           "cache 700\nhierarchical_memory_limit 9223372036854771712\ntotal_inactive_file 500\n")
    assert mm.read_memory() == MemorySnapshot(1000, 2000)
    # A tighter limit above us shows as hierarchical_memory_limit.
    _write(v1 / "jobs" / "one" / "memory.stat", "hierarchical_memory_limit 1800\ntotal_inactive_file 0\n")
    assert mm.read_memory() == MemorySnapshot(1500, 1800)


def test_reader_cgroup_v1_in_a_container(fake_tree):
    """Our cgroup path is not visible under the mount (it is the container's own cgroup): use the mount."""
    root, proc_cgroup = fake_tree
    _write(proc_cgroup, "4:memory:/docker/0123abcd\n0::/\n")
    v1 = root / "memory"
    _write(v1 / "memory.limit_in_bytes", "1000\n")
    _write(v1 / "memory.usage_in_bytes", "900\n")
    _write(v1 / "memory.stat", "total_inactive_file 100\n")
    assert mm.read_memory() == MemorySnapshot(800, 1000)


def test_reader_survives_garbage(fake_tree):
    root, proc_cgroup = fake_tree
    _write(proc_cgroup, "garbage without colons\n")
    _write(root / "memory" / "memory.limit_in_bytes", "lots\n")
    _write(root / "memory" / "memory.usage_in_bytes", "\n")
    assert mm.read_memory() == MemorySnapshot(750 * 1024, 1000 * 1024)


def test_reader_on_this_machine():
    snapshot = mm.read_memory()
    assert 0 < snapshot.used < snapshot.total


# ============================================================================ end to end, in a real cgroup
class _Cgroup:
    """A memory cgroup this test creates, owns and removes (v2 or v1)."""

    def __init__(self, limit: int) -> None:
        name = f"ember-test-{os.getpid()}-{time.monotonic_ns()}"
        v2_root = "/sys/fs/cgroup"
        if os.path.exists(os.path.join(v2_root, "cgroup.controllers")):
            with open(os.path.join(v2_root, "cgroup.subtree_control")) as f:
                if "memory" not in f.read().split():
                    raise PermissionError("the memory controller is not enabled for child cgroups")
            self.version = 2
            self.path = os.path.join(v2_root, name)
        elif os.path.isdir("/sys/fs/cgroup/memory"):
            self.version = 1
            self.path = os.path.join("/sys/fs/cgroup/memory", name)
        else:
            raise PermissionError("no cgroup memory controller is mounted")
        os.mkdir(self.path)
        try:
            if self.version == 2:
                self._write("memory.max", str(limit))
                if os.path.exists(os.path.join(self.path, "memory.swap.max")):
                    self._write("memory.swap.max", "0")
            else:
                self._write("memory.limit_in_bytes", str(limit))
                if os.path.exists(os.path.join(self.path, "memory.swappiness")):
                    try:
                        self._write("memory.swappiness", "0")
                    except OSError:
                        pass
        except BaseException:
            os.rmdir(self.path)
            raise

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def pids(self) -> list[int]:
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with open(os.path.join(self.path, name)) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def usage(self) -> int:
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        with open(os.path.join(self.path, name)) as f:
            return int(f.read())

    def remove(self) -> None:
        """End whatever still runs in it (by pid: they are ours), then remove it."""
        import signal

        def empty() -> bool:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return not self.pids()

        wait_for_condition(empty, timeout=20)
        wait_for_condition(lambda: self._rmdir(), timeout=20)

    def _rmdir(self) -> bool:
        try:
            os.rmdir(self.path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False


WRAPPER = """
import os, sys
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-c", "from ember.cli import main; main()", *sys.argv[2:]])
"""


@ember.remote(max_retries=-1)
def hog(nbytes, index):
    """Take ``nbytes`` of memory in 16 MiB steps (as a real job fills memory), then give it back."""
    import time

    import numpy as np

    chunks = []
    for _ in range(nbytes // (16 * 1024 * 1024)):
        chunks.append(np.ones(16 * 1024 * 1024, dtype=np.uint8))  # touched: really resident
        time.sleep(0.01)  # pacing the allocation: a poller cannot catch a faster one
    total = sum(int(c[::4096].sum()) for c in chunks)
    return index, total


def test_tasks_finish_through_monitor_kills_without_the_kernel_oom_killer(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root to create a cgroup")
    limit = GiB
    try:
        cgroup = _Cgroup(limit)
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")
    tmpdir = str(tmp_path / "cluster")
    env = cli_env(
        tmpdir,
        EMBER_memory_usage_threshold="0.8",
        EMBER_memory_monitor_period_s="0.02",
        EMBER_oom_retry_backoff_s="0.05",
        EMBER_node_death_timeout_s="30",
    )
    monkeypatch.setenv("EMBER_TMPDIR", tmpdir)
    import subprocess

    port = free_port()
    try:
        started = subprocess.run(
            [sys.executable, "-c", WRAPPER, os.path.join(cgroup.path, "cgroup.procs"),
             "start", "--head", "--port", str(port), "--num-cpus", "2", "--object-store-memory", str(64 * MiB),
             "--no-include-dashboard"],  # only the daemons the monitor must spare: control service, node daemon
            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        (session_dir,) = session_dirs(tmpdir)
        daemons = session_pids(tmpdir)
        assert len(daemons) == 2 and daemons <= set(cgroup.pids())  # the control service and node daemon run inside
        assert cgroup.oom_kills() == 0
        ember.init(address="auto")
        baseline = cgroup.usage()
        assert baseline + limit // 2 < 0.8 * limit, f"the idle head alone uses {baseline / MiB:.0f} MiB"

        half = limit // 2
        t0 = time.monotonic()
        results = ember.get([hog.remote(half, i) for i in range(20)], timeout=240)
        elapsed = time.monotonic() - t0
        assert results == [(i, half // 4096) for i in range(20)]
        assert cgroup.oom_kills() == 0, "the kernel's OOM killer ended a process: the monitor was too late"
        kills = log_text(session_dir, "raylet-*.log").count("killing worker pid")
        print(f"\nmemory monitor: 20 tasks of {half / MiB:.0f} MiB in a {limit / MiB:.0f} MiB cgroup finished; "
              f"in {elapsed:.1f}s; {kills} worker(s) ended by the monitor, 0 by the kernel "
              f"(idle head: {baseline / MiB:.0f} MiB)")
        assert kills >= 1  # two such tasks cannot run side by side: the monitor had to act
        assert all(pid_alive(pid) for pid in daemons)  # daemons are never chosen
    finally:
        if ember.is_initialized():
            ember.shutdown()
        try:
            end_everything(tmpdir, cgroup.pids())
        finally:
            cgroup.remove()
