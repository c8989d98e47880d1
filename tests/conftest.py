"""Fixtures shared by the whole suite.

* ``ember_local``: a fresh local cluster for one test (``num_cpus=2``, small store).
* ``ember_shared``: one cluster for a whole module, for tests that do not break it.
* ``ember_start``: a factory for a test that needs other ``init`` arguments.

Every test is checked for leftovers (``_leak_check``): once it is over, no
process started under pytest may remain (orphans included: pytest makes
itself the "child subreaper", so daemons started detached by ``ember start``
count too), no ``/dev/shm/ember_*`` store created during the test may remain,
and a shared cluster must have no task still running. A leftover is ended by
pid (or removed) and the test fails. When a shared cluster stops (end of its
module), its object store must be back to its use at the start: a value still
stored then is leaked (``_shared_store_leak``).
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition

STORE_BYTES = 200 * 1024 * 1024
#: Seconds a process still running after its test may take to finish exiting.
EXIT_GRACE_S = 3.0
_PR_SET_CHILD_SUBREAPER = 36

#: The cluster of the module-scoped ``ember_shared`` fixture while it is up.
_shared: dict[str, Any] = {}


# ----------------------------------------------------------------------------- session hooks
def pytest_configure(config: pytest.Config) -> None:
    # Orphaned descendants (detached daemons, workers whose daemon died) are
    # re-parented to pytest instead of init, so the leak check can see them.
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "No tests collected" must fail the run: a typo in a path or -k selects nothing.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _ember_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Sessions, logs and the "current cluster" file of the tests live in a temp dir, never /tmp/ember."""
    _basetemp.append(str(tmp_path_factory.getbasetemp()))
    path = str(tmp_path_factory.mktemp("ember_tmp"))
    old = os.environ.get("EMBER_TMPDIR")
    os.environ["EMBER_TMPDIR"] = path
    os.environ.pop("EMBER_ADDRESS", None)
    os.environ.pop("RAY_ADDRESS", None)
    yield path
    if old is None:
        os.environ.pop("EMBER_TMPDIR", None)
    else:
        os.environ["EMBER_TMPDIR"] = old


# ----------------------------------------------------------------------------- leak checks
_basetemp: list[str] = []


def _shm_dirs() -> set[str]:
    """Object store dirs of sessions created by this test run (other runs may share the machine)."""
    if not _basetemp:
        return set()
    ours = {
        os.path.basename(p)
        for p in glob.glob(os.path.join(_basetemp[0], "**", "session_*"), recursive=True)
        if not p.endswith("session_latest")
    }
    return {p for p in glob.glob("/dev/shm/ember_*") if os.path.basename(p)[len("ember_"):].rsplit("_", 1)[0] in ours}


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _reap_zombies() -> None:
    """Collect exited orphans that were re-parented to us (we are their subreaper)."""
    me = os.getpid()
    for proc in _descendants():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE and proc.ppid() == me:
                os.waitpid(proc.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError, OSError):
            pass


def _live_descendants(exclude: set[int]) -> list[psutil.Process]:
    _reap_zombies()
    out = []
    for proc in _descendants():
        if proc.pid in exclude:
            continue
        try:
            # A shared cluster's daemons start workers at any time (e.g. to refill the
            # prestarted pool after an actor's worker died): their descendants are allowed.
            if exclude and any(parent.pid in exclude for parent in proc.parents()):
                continue
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid={proc.pid} {' '.join(proc.cmdline())[:160]}"
    except psutil.Error:
        return f"pid={proc.pid} (gone)"


def _end_processes(procs: list[psutil.Process]) -> None:
    """SIGKILL each leftover by pid and reap it."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)
    _reap_zombies()


def _shared_cluster_pids() -> set[int]:
    """Processes of the module's shared cluster (daemons and everything under them)."""
    nodes = _shared.get("nodes")
    if nodes is None:
        return set()
    pids: set[int] = set()
    for _name, proc in nodes.procs:
        pids.add(proc.pid)
        try:
            pids.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
        except psutil.Error:
            pass
    return pids


def check_no_leftovers(shm_before: set[str], allowed_pids: set[int], allowed_shm: set[str]) -> list[str]:
    """End and remove what is left over; return a description of each leftover."""
    problems: list[str] = []
    leftovers = _live_descendants(allowed_pids)
    if leftovers:
        # Orphans of a daemon that was killed die a moment later (parent-death
        # signal): give processes that are already exiting a short grace period.
        try:
            wait_for_condition(lambda: not _live_descendants(allowed_pids), timeout=EXIT_GRACE_S)
        except RuntimeError:
            pass
        leftovers = _live_descendants(allowed_pids)
    if leftovers:
        problems.append("processes left running: " + "; ".join(_describe(p) for p in leftovers))
        _end_processes(leftovers)
    new_shm = _shm_dirs() - shm_before - allowed_shm
    if new_shm:
        problems.append("object store dirs left behind: " + ", ".join(sorted(new_shm)))
        for path in new_shm:
            shutil.rmtree(path, ignore_errors=True)
    return problems


@pytest.fixture(autouse=True)
def _leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    shm_before = _shm_dirs()
    yield
    problems: list[str] = []
    allowed_pids: set[int] = set()
    allowed_shm: set[str] = set()
    if _shared.get("nodes") is not None and ember.is_initialized():
        worker = runtime.core_worker()
        try:
            wait_for_condition(lambda: worker.submitter.num_pending() == 0, timeout=10)
        except RuntimeError:
            problems.append(
                f"{worker.submitter.num_pending()} task(s) still pending or running on the shared cluster"
            )
        allowed_pids = _shared_cluster_pids()
        allowed_shm = {_shared["store_dir"]}
    elif ember.is_initialized():
        problems.append("the test left ember initialized (missing ember.shutdown())")
        ember.shutdown()
    problems += check_no_leftovers(shm_before, allowed_pids, allowed_shm)
    if problems:
        pytest.fail("Leftovers after the test: " + " | ".join(problems), pytrace=False)


# ----------------------------------------------------------------------------- clusters
def _init(**kwargs: Any) -> Any:
    if _shared:
        _stop_shared()  # a test that needs its own cluster; the next shared test restarts it
    if ember.is_initialized():
        pytest.fail("ember is already initialized", pytrace=False)
    kwargs.setdefault("num_cpus", 2)
    kwargs.setdefault("object_store_memory", STORE_BYTES)
    # The HTTP server costs each cluster a process start: only the tests that use it ask for it.
    kwargs.setdefault("include_dashboard", False)
    return ember.init(**kwargs)


def _start_shared() -> Any:
    from ember.api import init as init_module

    _shared["shm_before"] = _shm_dirs()
    ctx = _init()
    _shared["ctx"] = ctx
    _shared["nodes"] = init_module._local_nodes
    _shared["store_dir"] = runtime.core_worker().store_dir
    _shared["store_baseline"] = runtime.core_worker().raylet_call("store_stats", None)
    return ctx


def _shared_store_leak() -> str | None:
    """Whether the shared cluster's object store is back to its use when it started.

    Objects still stored once the module's tests are over are leaked (a ref held by
    nothing the tests can reach, or never freed). Not checked after a failed test: its
    traceback keeps the test's refs alive.
    """
    baseline = _shared.get("store_baseline")
    if baseline is None or _shared.get("tests_failed") or not ember.is_initialized():
        return None
    import gc

    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            setattr(sys, name, None)  # an expected failure's frames, kept for post-mortem debugging
    gc.collect()
    worker = runtime.core_worker()

    def back_to_baseline() -> bool:
        stats = worker.raylet_call("store_stats", None)
        return stats["used"] <= baseline["used"] and stats["spilled_objects"] <= baseline["spilled_objects"]

    try:
        wait_for_condition(back_to_baseline, timeout=10)
        return None
    except RuntimeError:
        stats = worker.raylet_call("store_stats", None)
        held = [
            f"{row['object_id'][:16]} ({row['reference_type']}, {row['size']} B, call site {row['call_site']})"
            for row in worker.ownership.memory_table()["objects"] if row["owned"] and row["size"]
        ]
        return (
            f"the shared cluster's object store did not return to its baseline at the end of the module: "
            f"{stats['used']} B in {stats['objects']} objects and {stats['spilled_objects']} spilled "
            f"(baseline {baseline['used']} B, {baseline['spilled_objects']} spilled); the driver still "
            f"owns: {', '.join(held) or 'nothing (owned by other processes)'}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    if _shared and outcome.get_result().failed:  # type: ignore[attr-defined]
        _shared["tests_failed"] = True


def _stop_shared() -> None:
    leak = _shared_store_leak()
    shm_before = _shared.get("shm_before", set())
    _shared.clear()
    ember.shutdown()
    problems = check_no_leftovers(shm_before, set(), set())
    if leak:
        problems.append(leak)
    if problems:
        pytest.fail("Leftovers after the shared cluster shut down: " + " | ".join(problems), pytrace=False)


@pytest.fixture
def ember_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """``ember_env(field=value, ...)`` sets ``EMBER_<field>`` for this test (daemons inherit it) and
    makes this process re-read its config; the config is re-read again once the variables are gone."""
    from ember._private.config import reset_config

    def set_env(**values: Any) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"EMBER_{name}", str(value))
        reset_config()

    yield set_env
    monkeypatch.undo()
    reset_config()


@pytest.fixture
def own_cluster() -> None:
    """For a test that starts a cluster by other means (``Cluster``, ``ember start``): the
    module's shared cluster, if up, is stopped first (its checks run), as ``ember_start`` does."""
    if _shared:
        _stop_shared()
    elif ember.is_initialized():
        pytest.fail("ember is already initialized", pytrace=False)


@pytest.fixture
def ember_local() -> Iterator[Any]:
    """A fresh local cluster (2 CPUs, 200 MiB store), always shut down."""
    ctx = _init()
    try:
        yield ctx
    finally:
        ember.shutdown()


@pytest.fixture
def ember_start() -> Iterator[Callable[..., Any]]:
    """``ember_start(**init_kwargs)`` starts a cluster with other arguments; shut down after the test."""

    def start(**kwargs: Any) -> Any:
        return _init(**kwargs)

    try:
        yield start
    finally:
        ember.shutdown()


@pytest.fixture(scope="module", autouse=True)
def _shared_cluster_scope() -> Iterator[None]:
    """The shared cluster lives at most until the end of its module."""
    yield
    if _shared:
        _stop_shared()


@pytest.fixture
def ember_shared() -> Any:
    """A cluster shared by the tests of a module that leave it healthy (2 CPUs, 200 MiB store).

    Started on first use; a test that starts its own cluster stops it, and the
    next test that asks for it starts it again.
    """
    if _shared and ember.is_initialized():
        return _shared["ctx"]
    if _shared:
        _stop_shared()
    return _start_shared()
