"""The autoscaler end to end: real heads (``ember up`` / ``ember start --autoscaling-config``), real
node daemons started by the fake_multinode provider, real drivers.

Clusters are small for 2 cores: a head with no CPU and up to 3 one-CPU worker nodes.
Every test ends every process it started, by pid (``ember down``/``ember stop``, and
``end_everything`` as a backstop whatever happened).
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest
import yaml

import ember
from ember._private import session
from ember._private.processes import pid_alive
from ember._private.test_utils import wait_for_condition, wait_for_file, write_file_atomic
from ember.autoscaler.fake_multinode import state_path
from ember.rpc.sync_client import gcs_request
from tests.cli_cluster import cli_env, ember_cli, end_everything, session_pids
from tests.http_helpers import http

ROOT = pathlib.Path(__file__).resolve().parent.parent
IDLE_TIMEOUT_S = 3.0


def cluster_yaml(name: str, **overrides) -> dict:
    raw = {
        "cluster_name": name,
        "max_workers": 3,
        "idle_timeout_minutes": IDLE_TIMEOUT_S / 60,
        "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode"},
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "node_config": {}},
            "cpu_worker": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 3, "node_config": {}},
        },
    }
    raw.update(overrides)
    return raw


class ScaledCluster:
    """A head with an autoscaler, started through the CLI under its own EMBER_TMPDIR."""

    def __init__(self, tmp_path: pathlib.Path, config: dict) -> None:
        self.tmpdir = str(tmp_path / "ember")
        self.config = config
        self.yaml = str(tmp_path / "cluster.yaml")
        pathlib.Path(self.yaml).write_text(yaml.safe_dump(config))
        python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.env = cli_env(self.tmpdir, EMBER_autoscaler_update_interval_s="0.2",
                           EMBER_autoscaler_launch_backoff_initial_s="0.2", PYTHONPATH=python_path)
        self.address = ""
        self.token = ""
        self.session_dir = ""
        self.max_workers_seen = 0

    def up(self, dashboard: bool = False) -> None:
        http_args = ["--dashboard-port", "0"] if dashboard else ["--no-include-dashboard"]
        result = ember_cli(["up", self.yaml, "--port", "0", *http_args], self.env)
        assert result.returncode == 0, result.stdout + result.stderr
        with open(os.path.join(self.tmpdir, "autoscaler", f"{self.config['cluster_name']}.json")) as f:
            record = json.load(f)
        self._attach(record["session_dir"], record["gcs_address"])

    def start_head(self) -> None:
        """``ember start --head --autoscaling-config`` (ended with ``ember stop``)."""
        result = ember_cli(["start", "--head", "--port", "0", "--num-cpus", "0", "--no-include-dashboard",
                            "--autoscaling-config", self.yaml], self.env)
        assert result.returncode == 0, result.stdout + result.stderr
        started = json.loads(pathlib.Path(self.tmpdir, "ember_started.json").read_text())
        session_dir = started[0]["session_dir"]
        with open(os.path.join(session_dir, "gcs_restart_args.json")) as f:
            args = json.load(f)
        self._attach(session_dir, f"{args[args.index('--host') + 1]}:{args[args.index('--port') + 1]}")

    def _attach(self, session_dir: str, address: str) -> None:
        self.session_dir = session_dir
        self.address = address
        self.token = session.read_token(session_dir)

    def connect(self) -> None:
        ember.init(address=self.address, _token=self.token)

    def call(self, method: str, payload=None):
        return gcs_request(self.address, self.token, method, payload)

    def workers(self) -> list[dict]:
        """Live worker nodes (every node but the head); remembers the most ever seen."""
        nodes = [n for n in self.call("get_cluster_demand")["nodes"] if not n["IsHead"]]
        self.max_workers_seen = max(self.max_workers_seen, len(nodes))
        return nodes

    def status(self) -> str:
        result = ember_cli(["status", "--address", self.address], self.env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def provider_pids(self) -> set[int]:
        try:
            with open(state_path(self.session_dir)) as f:
                return {record["pid"] for record in json.load(f).values()}
        except OSError:
            return set()

    def close(self) -> None:
        if ember.is_initialized():
            ember.shutdown()
        end_everything(self.tmpdir)


@pytest.fixture
def make_cluster(tmp_path):
    made: list[ScaledCluster] = []

    def make(config: dict) -> ScaledCluster:
        cluster = ScaledCluster(tmp_path, config)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@ember.remote(num_cpus=1)
def hold(release: str, report: str) -> str:
    node_id = ember.get_runtime_context().get_node_id()
    write_file_atomic(report, node_id)
    wait_for_file(release, timeout=120)
    return node_id


def test_tasks_scale_up_to_max_then_idle_nodes_go_and_down_ends_everything(make_cluster, tmp_path):
    cluster = make_cluster(cluster_yaml("tasks"))
    cluster.up()
    cluster.connect()
    head = next(n["NodeID"] for n in cluster.call("get_nodes") if n["IsHead"])
    release = str(tmp_path / "release")
    reports = [str(tmp_path / f"report-{i}") for i in range(6)]
    refs = [hold.remote(release, report) for report in reports]
    # Six one-CPU tasks, max_workers 3: three nodes come up and run three tasks at once.
    wait_for_condition(lambda: len([r for r in reports if os.path.exists(r)]) == 3 and cluster.workers(), timeout=90)
    running_on = {pathlib.Path(r).read_text() for r in reports if os.path.exists(r)}
    assert len(running_on) == 3 and head not in running_on
    write_file_atomic(release, "go")
    done = ember.get(refs, timeout=90)
    assert len(done) == 6 and head not in done
    assert cluster.max_workers_seen == 3
    ember.shutdown()
    # Idle for IDLE_TIMEOUT_S: every worker node is removed, with the reason.
    wait_for_condition(lambda: not cluster.workers(), timeout=60)
    assert cluster.max_workers_seen == 3
    text = cluster.status()
    assert "scale_up: adding 3 cpu_worker node(s): 6 queued task/actor request(s)" in text
    assert text.count("scale_down: removing cpu_worker node") == 3 and "idle for" in text
    pids = session_pids(cluster.tmpdir)
    result = ember_cli(["down", cluster.yaml], cluster.env)
    assert result.returncode == 0 and "is down" in result.stdout, result.stdout + result.stderr
    assert not [pid for pid in pids if pid_alive(pid)]
    assert not os.path.exists(os.path.join(cluster.tmpdir, "autoscaler", "tasks.json"))
    again = ember_cli(["down", cluster.yaml], cluster.env)
    assert again.returncode == 0 and "No cluster named 'tasks' is up" in again.stdout


@ember.remote(num_cpus=1)
class Pinger:
    def node(self) -> str:
        return ember.get_runtime_context().get_node_id()


def test_actor_strict_spread_group_and_request_resources(make_cluster):
    from ember.autoscaler.sdk import request_resources
    from ember.util.placement_group import (
        placement_group,
        placement_group_table,
        remove_placement_group,
    )

    cluster = make_cluster(cluster_yaml("actors"))
    cluster.up()
    cluster.connect()
    head = next(n["NodeID"] for n in cluster.call("get_nodes") if n["IsHead"])
    actor = Pinger.remote()
    assert ember.get(actor.node.remote(), timeout=90) != head  # a node was added for the actor
    ember.kill(actor)
    # A STRICT_SPREAD group of 3 needs 3 nodes at once (one may be the actor's, if still there).
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    ember.get(pg.ready(), timeout=90)
    nodes = placement_group_table(pg)["bundles_to_node_id"]
    assert len(set(nodes.values())) == 3 and head not in nodes.values()
    assert cluster.max_workers_seen <= 3
    remove_placement_group(pg)
    # Requested capacity keeps two nodes through the idle timeout; the third goes.
    request_resources(num_cpus=2)
    wait_for_condition(lambda: len(cluster.workers()) == 2, timeout=60)
    wait_for_condition(lambda: all(n["IdleSeconds"] > 2 * IDLE_TIMEOUT_S for n in cluster.workers())
                       and len(cluster.workers()) == 2, timeout=60)
    assert "{'CPU': 1.0}: 2 from request_resources()" in cluster.status()
    with pytest.raises(ValueError, match="non-negative number"):
        request_resources(bundles=[{"CPU": -1}])
    with pytest.raises(TypeError):
        request_resources(num_cpus="2")
    # `ember down` with live worker nodes ends them too (the autoscaler first).
    pids = session_pids(cluster.tmpdir) | cluster.provider_pids()
    assert len(cluster.provider_pids()) == 2
    ember.shutdown()
    result = ember_cli(["down", cluster.yaml], cluster.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [pid for pid in pids if pid_alive(pid)]


@ember.remote
def needs_gpu() -> int:
    return 1


def test_infeasible_demand_is_reported_within_seconds(make_cluster, capfd):
    cluster = make_cluster(cluster_yaml("gpu"))
    cluster.up(dashboard=True)
    cluster.connect()
    ref = needs_gpu.options(num_gpus=1).remote()
    seen = []

    def warned() -> bool:
        seen.append(capfd.readouterr().err)
        return "cannot be scheduled" in "".join(seen)

    wait_for_condition(warned, timeout=10)
    text = "".join(seen)
    assert "nor any node type the autoscaler can add ({CPU: 1" in text and "GPU: 1" in text
    wait_for_condition(lambda: "Infeasible" in cluster.status(), timeout=10)
    status = cluster.status()
    assert "{CPU: 1, GPU: 1}: no node type (and no node) has these resources" in status
    assert "{'CPU': 1.0, 'GPU': 1.0}: 1+ pending tasks/actors" in status
    assert cluster.workers() == []  # nothing was launched for it
    # The HTTP server shows the same: Ray's status document and the Cluster page's autoscaler card.
    url = "http://" + session.read_dashboard_url(cluster.session_dir)
    report = wait_for_condition(lambda: http(url, "/api/cluster_status", token=cluster.token).json()["data"], timeout=30)
    assert report["clusterStatus"]["loadMetricsReport"]["resourceDemand"] == [[{"CPU": 1.0, "GPU": 1.0}, 1]]
    assert report["clusterStatus"]["autoscaler"]["infeasible"][0][0] == "{CPU: 1, GPU: 1}"
    assert "Infeasible" in report["autoscalingStatus"]
    card = http(url, "/api/ui/nodes", token=cluster.token).json()["autoscaler"]
    assert card["running"] and card["cluster_name"] == "gpu"
    assert {t["name"]: (t["active"], t["max_workers"]) for t in card["node_types"]} == {"head": (1, 3), "cpu_worker": (0, 3)}
    assert card["infeasible"] and "pending tasks/actors" in card["demands"][0]
    show_cluster_page(url, cluster.token)
    ember.cancel(ref)


def show_cluster_page(url: str, token: str) -> None:
    """The Cluster page in a real browser shows the autoscaler card (skipped without a browser);
    ``EMBER_UPDATE_SCREENSHOTS=1`` saves it as docs/screenshots/cluster_autoscaler.png."""
    import urllib.parse

    from tests import browser

    try:
        browser.require_browser()
    except pytest.skip.Exception:
        return
    with browser.open_browser() as driver:
        driver.get(f"{url}/login?token={urllib.parse.quote(token)}")
        driver.get(f"{url}/#/cluster")

        def text() -> str:
            return driver.execute_script("const el = document.querySelector('#view'); return el ? el.textContent : '';")

        try:
            wait_for_condition(lambda: "Infeasible (no node type can run these)" in text() and "cpu_worker" in text(),
                               timeout=30, retry_interval_ms=200)
        except RuntimeError as exc:
            raise AssertionError(f"the Cluster page shows:\n{text()[:2000]}") from exc
        assert "Autoscaler" in text() and "Recent scaling events" in text()
        if os.environ.get("EMBER_UPDATE_SCREENSHOTS") == "1":
            assert driver.save_screenshot(str(ROOT / "docs" / "screenshots" / "cluster_autoscaler.png"))


def test_bad_yaml_is_a_clear_error_and_starts_nothing(tmp_path):
    env = cli_env(str(tmp_path / "ember"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cluster_yaml("bad", max_workers=-2)))
    for args in (["up", str(bad)], ["start", "--head", "--port", "0", "--autoscaling-config", str(bad)]):
        result = ember_cli(args, env)
        assert result.returncode != 0
        assert f"{bad}: max_workers: must be a whole number >= 0, got -2" in result.stderr
    bad.write_text("cluster_name: x\navailable_node_types: {head: {}}\n  bad indent: [")
    result = ember_cli(["up", str(bad)], env)
    assert result.returncode != 0 and "is not valid YAML" in result.stderr
    result = ember_cli(["start", "--address", "127.0.0.1:1", "--autoscaling-config", str(bad)], env)
    assert result.returncode != 0 and "use it with --head" in result.stderr
    assert not list((tmp_path / "ember").glob("session_*"))


def test_provider_failures_are_retried_reported_and_stop_ends_everything(make_cluster, tmp_path):
    failing = tmp_path / "quota-exhausted"
    failing.write_text("")
    provider = {"type": "external", "module": "tests.flaky_provider.FlakyProvider", "fail_while": str(failing)}
    cluster = make_cluster(cluster_yaml("flaky", provider=provider))
    cluster.start_head()
    cluster.connect()
    ref = hold.remote(str(tmp_path / "release"), str(tmp_path / "report"))
    wait_for_condition(lambda: cluster.status().count("launch_failed: launching 1 cpu_worker") >= 2, timeout=30)
    status = cluster.status()
    assert "cpu_worker: LaunchFailed" in status and "quota exceeded (simulated by the test)" in status
    assert "retrying in" in status and cluster.workers() == []

    # The cluster keeps working meanwhile (the head runs what needs no CPU).
    @ember.remote(num_cpus=0)
    def zero() -> str:
        return "ok"

    assert ember.get(zero.remote(), timeout=30) == "ok"
    failing.unlink()  # the provider recovers: the node comes and the task runs
    wait_for_file(str(tmp_path / "report"), timeout=60)
    write_file_atomic(str(tmp_path / "release"), "go")
    assert ember.get(ref, timeout=30) != ""
    assert "scale_up: adding 1 cpu_worker node(s)" in cluster.status()
    pids = session_pids(cluster.tmpdir) | cluster.provider_pids()
    assert cluster.provider_pids()
    ember.shutdown()
    result = ember_cli(["stop"], cluster.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [pid for pid in pids if pid_alive(pid)]


def test_a_killed_autoscaler_is_restarted_with_backoff_and_adopts_its_nodes(make_cluster, tmp_path, capfd):
    import signal

    # A long idle timeout: no node is ended for being idle while this test looks at them.
    cluster = make_cluster(cluster_yaml("supervised", idle_timeout_minutes=10))
    cluster.up()
    cluster.connect()
    release = str(tmp_path / "release")
    first = hold.remote(release, str(tmp_path / "report-1"))
    wait_for_file(str(tmp_path / "report-1"), timeout=90)
    nodes_before = cluster.provider_pids()
    assert len(nodes_before) == 1
    scaler = cluster.call("get_autoscaler_status")["pid"]
    os.kill(scaler, signal.SIGKILL)
    wait_for_condition(lambda: not pid_alive(scaler), timeout=10)

    # While it is down the cluster keeps working, and demand a node type fits is not called infeasible.
    @ember.remote(num_cpus=0)
    def zero() -> str:
        return "ok"

    assert ember.get(zero.remote(), timeout=30) == "ok"
    second = hold.remote(release, str(tmp_path / "report-2"))

    def restarted(old: int) -> int | None:
        status = cluster.call("get_autoscaler_status")
        pid = status.get("pid") if status else None
        return pid if pid not in (None, old) and not status.get("stopped") else None

    new = wait_for_condition(lambda: restarted(scaler), timeout=30)
    # The restarted autoscaler adopts the running node: the second task gets one more node, not two.
    wait_for_file(str(tmp_path / "report-2"), timeout=90)
    assert nodes_before < cluster.provider_pids() and len(cluster.provider_pids()) == 2
    text = cluster.status()
    assert f"autoscaler_died: the autoscaler (pid {scaler}) exited; restarting it in 0.5s" in text
    assert f"autoscaler_restarted: started the autoscaler again as pid {new} (restart 1)" in text
    assert "adopted: took over the nodes the provider runs: 1 cpu_worker" in text
    assert "scale_up: adding 1 cpu_worker node(s)" in text  # the events from before the death are kept
    assert session.read_pid_files(cluster.session_dir)["autoscaler"] == new
    # Killed again soon after: the pause doubles (and a child of the control service is reaped with its cause).
    os.kill(new, signal.SIGKILL)
    newer = wait_for_condition(lambda: restarted(new), timeout=30)
    assert f"the autoscaler (pid {new}) was killed by SIGKILL; restarting it in 1s" in cluster.status()
    assert "cannot be scheduled" not in capfd.readouterr().err
    write_file_atomic(release, "go")
    assert len(ember.get([first, second], timeout=60)) == 2
    assert len(cluster.provider_pids()) == 2, cluster.status()
    # `ember down` ends the restarted autoscaler (never restarted again) and every node.
    pids = session_pids(cluster.tmpdir) | cluster.provider_pids() | {newer}
    ember.shutdown()
    result = ember_cli(["down", cluster.yaml], cluster.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [pid for pid in pids if pid_alive(pid)]


def test_infeasible_actors_and_placement_groups_are_reported_within_seconds(make_cluster, capfd):
    from ember.util.placement_group import placement_group

    cluster = make_cluster(cluster_yaml("loud"))
    cluster.up()
    cluster.connect()
    gpu_actor = Pinger.options(num_gpus=1).remote()
    big_actor = Pinger.options(num_cpus=2).remote()  # the biggest node type has one CPU
    packed = placement_group([{"CPU": 1}] * 2, strategy="STRICT_PACK")  # two CPUs on one node: no type has them
    seen = []

    def warned() -> bool:
        seen.append(capfd.readouterr().err)
        return "".join(seen).count("cannot be scheduled") >= 3

    wait_for_condition(warned, timeout=10)
    text = "".join(seen)
    scaler = "nor any node type the autoscaler can add ({CPU: 1"
    assert f"WARNING: Actor Pinger {gpu_actor._actor_id.hex()[:12]} cannot be scheduled. No node in this cluster {scaler}" in text
    assert "can ever satisfy {CPU: 1, GPU: 1}" in text
    assert f"Actor Pinger {big_actor._actor_id.hex()[:12]} cannot be scheduled" in text and "can ever satisfy {CPU: 2}" in text
    assert f"WARNING: Placement group {packed.id.hex()} (STRICT_PACK) cannot be scheduled" in text
    assert "its bundles [{CPU: 1}, {CPU: 1}] together" in text
    wait_for_condition(lambda: cluster.status().count("no node type") >= 3, timeout=10)
    status = cluster.status()
    assert "{CPU: 1, GPU: 1}: no node type (and no node) has these resources" in status
    assert "{CPU: 2}: no node type (and no node) has these resources" in status
    assert "placement group STRICT_PACK {CPU: 1} {CPU: 1}: no node type has {CPU: 2}" in status
    assert "{'CPU': 2.0}: 1+ pending tasks/actors" in status
    assert "{'CPU': 1.0} * 2 (STRICT_PACK): 1+ pending placement groups" in status
    assert cluster.workers() == []  # nothing was launched for them
    # An actor a node type fits is not warned about: the autoscaler adds its node.
    fits = Pinger.remote()
    assert ember.get(fits.node.remote(), timeout=90)
    assert "Actor Pinger " + fits._actor_id.hex()[:12] not in capfd.readouterr().err


@ember.remote(num_cpus=1)
def make_block() -> bytes:
    return b"x" * (2 * 1024 * 1024)  # kept in the object store of the node that ran it


def test_an_idle_node_holding_objects_says_why_it_stays_until_they_are_freed(make_cluster):
    cluster = make_cluster(cluster_yaml("objects"))
    cluster.up(dashboard=True)
    cluster.connect()
    ref = make_block.remote()
    assert ember.wait([ref], timeout=90, fetch_local=False)[0]
    wait_for_condition(lambda: "holds 1 object(s) referenced elsewhere" in cluster.status(), timeout=60)
    text = cluster.status()
    assert "Idle nodes kept past the idle timeout:" in text
    assert "(cpu_worker): holds 1 object(s) referenced elsewhere; ending it would lose them" in text
    assert "kept: idle cpu_worker node " in text  # recorded once as an event too
    url = "http://" + session.read_dashboard_url(cluster.session_dir)
    card = wait_for_condition(lambda: http(url, "/api/ui/nodes", token=cluster.token).json()["autoscaler"]["kept"],
                              timeout=30)
    assert card[0][1] == "cpu_worker" and card[0][2].startswith("holds 1 object(s) referenced elsewhere")
    assert len(cluster.workers()) == 1
    assert len(ember.get(ref, timeout=30)) == 2 * 1024 * 1024
    del ref  # freed: nothing keeps the node any more
    wait_for_condition(lambda: not cluster.workers(), timeout=60)
    text = cluster.status()
    assert "scale_down: removing cpu_worker node" in text and "Idle nodes kept" not in text
