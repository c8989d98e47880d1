"""Joining a cluster by its address without ``EMBER_CLUSTER_TOKEN``.

A head records its session in this user's private registry
(``<EMBER_TMPDIR>/clusters/``, folder 0700, files 0600, keyed by address), so
``init(address=...)`` of a cluster this user started on this machine finds
the token; a connection that does not present it is still DENIED.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys

import pytest

import ember
from ember._private import session
from ember._private.test_utils import free_port
from ember.cluster_utils import Cluster
from ember.exceptions import AuthenticationError
from tests.cli_cluster import cli_env, ember_cli, end_everything

MiB = 1024 * 1024


@pytest.fixture
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_CLUSTER_TOKEN", raising=False)
    monkeypatch.delenv("EMBER_ADDRESS", raising=False)


@pytest.fixture
def cluster(no_token_env: None):
    c = Cluster(initialize_head=False, shutdown_at_exit=False)
    try:
        yield c
    finally:
        c.shutdown()


def _child_driver(address: str, code: str = "") -> subprocess.CompletedProcess[str]:
    """A separate driver joining ``address`` with no token in its environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("EMBER_CLUSTER_TOKEN", "EMBER_ADDRESS", "RAY_ADDRESS")}
    script = (
        "import ember\n"
        f"ember.init(address={address!r})\n"
        "@ember.remote\n"
        "def square(x):\n"
        "    return x * x\n"
        "print('RESULT', ember.get(square.remote(7)), len(ember.nodes()))\n"
        f"{code}"
        "ember.shutdown()\n"
    )
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


def _connect_with(address: str, token: str) -> None:
    from ember.rpc import connect

    async def attempt() -> None:
        conn = await connect(address, token, timeout=5.0)
        conn.close()

    asyncio.run(attempt())


def test_init_joins_a_cluster_utils_cluster_by_address(cluster):
    cluster.add_node(num_cpus=1, object_store_memory=100 * MiB)
    cluster.add_node(num_cpus=1, object_store_memory=100 * MiB)
    ember.init(address=cluster.address)
    assert len([n for n in ember.nodes() if n["Alive"]]) == 2

    @ember.remote
    def add(a, b):
        return a + b

    assert ember.get(add.remote(2, 3)) == 5
    # "localhost" names the same head.
    port = cluster.address.rsplit(":", 1)[1]
    assert session.discover_token(f"localhost:{port}") == cluster.token


def test_the_registry_is_private_and_forgotten_when_the_head_stops(cluster):
    cluster.add_node(num_cpus=1, object_store_memory=100 * MiB)
    folder = session.clusters_dir()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    entries = [os.path.join(folder, name) for name in os.listdir(folder)]
    mine = [p for p in entries if json.load(open(p))["gcs_address"] == cluster.address]
    assert len(mine) == 1
    assert stat.S_IMODE(os.stat(mine[0]).st_mode) == 0o600
    session_dir = json.load(open(mine[0]))["session_dir"]
    assert stat.S_IMODE(os.stat(os.path.join(session_dir, "token")).st_mode) == 0o600
    address = cluster.address
    cluster.shutdown()
    assert not os.path.exists(mine[0])
    with pytest.raises(ConnectionError, match="No token for the cluster"):
        ember.init(address=address)


def test_a_registry_entry_readable_by_others_is_not_trusted(cluster):
    cluster.add_node(num_cpus=1, object_store_memory=100 * MiB)
    path = session._registry_path(cluster.address)
    os.chmod(path, 0o644)
    try:
        assert session.discover_token(cluster.address) is None
        with pytest.raises(ConnectionError, match="EMBER_CLUSTER_TOKEN"):
            ember.init(address=cluster.address)
    finally:
        os.chmod(path, 0o600)
    assert session.discover_token(cluster.address) == cluster.token


def test_a_child_driver_joins_the_cluster_of_init_by_its_address(no_token_env):
    ember.init(num_cpus=2, object_store_memory=100 * MiB)
    try:
        address = ember.get_runtime_context().gcs_address
        result = _child_driver(address)
        assert result.returncode == 0, result.stderr
        assert "RESULT 49 1" in result.stdout
    finally:
        ember.shutdown()


def test_init_joins_any_head_this_user_started_by_address(tmp_path, monkeypatch):
    """Two heads started with `ember start`; the older one is no longer "current" but is found."""
    tmpdir = str(tmp_path / "cli")
    env = cli_env(tmpdir)
    monkeypatch.setenv("EMBER_TMPDIR", tmpdir)
    monkeypatch.delenv("EMBER_CLUSTER_TOKEN", raising=False)
    ports = [free_port(), free_port()]
    try:
        for port in ports:
            started = ember_cli(["start", "--head", "--port", str(port), "--num-cpus", "1",
                                 "--object-store-memory", str(64 * MiB)], env)
            assert started.returncode == 0, started.stderr
        first = f"127.0.0.1:{ports[0]}"
        assert session.read_current_cluster()["gcs_address"] != first
        result = _child_driver(first)
        assert result.returncode == 0, result.stderr
        assert "RESULT 49 1" in result.stdout
        # The CLI finds it the same way.
        status = ember_cli(["status", "--address", first], env)
        assert status.returncode == 0, status.stderr
        assert ember_cli(["stop"], env).returncode == 0
        assert os.listdir(session.clusters_dir()) == []
    finally:
        end_everything(tmpdir)


def test_a_connection_without_the_token_is_still_denied(cluster):
    cluster.add_node(num_cpus=1, object_store_memory=100 * MiB)
    _connect_with(cluster.address, cluster.token)  # the right one is accepted
    for wrong in ("", "0" * 48, cluster.token[:-1] + ("0" if cluster.token[-1] != "0" else "1")):
        with pytest.raises(AuthenticationError, match="wrong or missing cluster token"):
            _connect_with(cluster.address, wrong)
    with pytest.raises(ConnectionError, match="refused"):
        ember.init(address=cluster.address, _token="f" * 48)
    assert not ember.is_initialized()


def test_a_cluster_of_another_machine_or_user_needs_the_token(no_token_env):
    port = free_port()
    with pytest.raises(ConnectionError, match="No token for the cluster at 127.0.0.1:"):
        ember.init(address=f"127.0.0.1:{port}")
    assert not ember.is_initialized()


def test_cluster_not_supported_is_false_on_linux():
    from ember.cluster_utils import cluster_not_supported

    assert cluster_not_supported is False
