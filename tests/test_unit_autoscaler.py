"""The autoscaler without processes: cluster YAML checks, the decision core, backoff, status text."""

from __future__ import annotations

import pytest
from protocol_helpers import via_wire

from ember.autoscaler import cluster_config, scaling
from ember.autoscaler.monitor import LaunchBackoff
from ember.autoscaler.node_provider import provider_class
from ember.autoscaler.status import format_status, status_document
from ember.exceptions import AutoscalerConfigError

HEAD = scaling.FixedNode("head", {"CPU": 0}, {"CPU": 0})


def make_config(**overrides):
    raw = {
        "cluster_name": "t",
        "max_workers": 3,
        "idle_timeout_minutes": 1,
        "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode"},
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "node_config": {}},
            "cpu": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 3, "node_config": {}},
        },
    }
    raw.update(overrides)
    return cluster_config.parse(raw)


def running(pid, node_type="cpu", cpus=1.0, free=None, idle_s=0.0, holds_objects=False):
    return scaling.WorkerNode(pid, node_type, joined=True, age_s=100, total={"CPU": cpus},
                              available={"CPU": cpus if free is None else free}, idle_s=idle_s,
                              objects=3 if holds_objects else 0)


def launching(pid, node_type="cpu", age_s=1.0):
    return scaling.WorkerNode(pid, node_type, joined=False, age_s=age_s)


# ------------------------------------------------------------------ config
def test_config_reads_rays_keys_and_defaults():
    cfg = make_config(idle_timeout_minutes=0.5)
    assert cfg.idle_timeout_s == 30.0 and cfg.max_workers == 3 and cfg.head_node_type == "head"
    assert list(cfg.worker_types) == ["cpu"] and cfg.worker_types["cpu"].resources == {"CPU": 1.0}
    raw = {"cluster_name": "d", "provider": {"type": "fake_multinode"}, "head_node_type": "h",
           "available_node_types": {"h": {}, "w": {"resources": {"CPU": 2}}}, "setup_commands": ["echo"]}
    cfg = cluster_config.parse(raw)
    assert (cfg.max_workers, cfg.idle_timeout_s, cfg.upscaling_speed) == (2, 300.0, 1.0)  # Ray's defaults
    assert cfg.node_types["w"].max_workers == 2 and cfg.node_types["w"].min_workers == 0


@pytest.mark.parametrize("change, words", [
    ({"max_wrokers": 3}, "max_wrokers: unknown key"),
    ({"max_workers": -1}, "max_workers: must be a whole number >= 0, got -1"),
    ({"max_workers": "3"}, "max_workers: must be a whole number"),
    ({"idle_timeout_minutes": "soon"}, "idle_timeout_minutes: must be a number"),
    ({"upscaling_speed": 0}, "upscaling_speed: must be above 0"),
    ({"head_node_type": "nope"}, "head_node_type: 'nope' is not one of available_node_types"),
    ({"provider": "fake_multinode"}, "provider: must be a mapping with a 'type'"),
    ({"available_node_types": {}}, "available_node_types: must be a non-empty mapping"),
    ({"available_node_types": {"head": {}, "w": {"resources": {"CPU": -1}}}}, "available_node_types.w.resources.CPU"),
    ({"available_node_types": {"head": {}, "w": {"min_workers": 4, "max_workers": 2}}}, "above the type's max_workers"),
    ({"available_node_types": {"head": {}, "w": {"cpus": 1}}}, "available_node_types.w.cpus: unknown key"),
    ({"available_node_types": {"head": {}, "w": {"min_workers": 3}, "v": {"min_workers": 2}}}, "add up to 5"),
    ({"cluster_name": ""}, "cluster_name: must be a non-empty name"),
])
def test_bad_config_names_the_key_and_the_problem(change, words):
    with pytest.raises(AutoscalerConfigError, match="the cluster config: ") as info:
        make_config(**change)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_required_key_and_bad_yaml_file(tmp_path):
    with pytest.raises(AutoscalerConfigError, match="provider: is required"):
        cluster_config.parse({"cluster_name": "x", "available_node_types": {"h": {}}, "head_node_type": "h"})
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster_name: [unclosed\n")
    with pytest.raises(AutoscalerConfigError, match=f"{path} is not valid YAML"):
        cluster_config.load(str(path))
    path.write_text("- just\n- a list\n")
    with pytest.raises(AutoscalerConfigError, match="must be a mapping of Ray's cluster keys"):
        cluster_config.load(str(path))
    with pytest.raises(AutoscalerConfigError, match="cannot read the cluster config"):
        cluster_config.load(str(tmp_path / "missing.yaml"))


def test_provider_lookup_is_checked():
    assert provider_class({"type": "fake_multinode"}).__name__ == "FakeMultiNodeProvider"
    with pytest.raises(AutoscalerConfigError, match="unknown provider 'aws'"):
        provider_class({"type": "aws"})
    with pytest.raises(AutoscalerConfigError, match="not a NodeProvider subclass"):
        provider_class({"type": "external", "module": "ember.autoscaler.scaling.Demand"})
    with pytest.raises(AutoscalerConfigError, match="cannot import"):
        provider_class({"type": "external", "module": "no_such_pkg.Provider"})


# ------------------------------------------------------------------ scale up
def test_tasks_launch_one_node_per_cpu_up_to_max_workers():
    d = scaling.decide(make_config(), [], [HEAD], scaling.Demand(shapes=[({"CPU": 1}, 6)]))
    assert d.launch == {"cpu": 3}
    assert "6 queued task/actor request(s)" in d.launch_reasons["cpu"]
    assert d.waiting and "max_workers" in d.waiting[0][1] and not d.infeasible


def test_free_room_and_launching_nodes_absorb_demand():
    nodes = [running("a", free=1.0), launching("b")]
    d = scaling.decide(make_config(), nodes, [HEAD], scaling.Demand(shapes=[({"CPU": 1}, 3)]))
    assert d.launch == {"cpu": 1} and not d.terminate
    d = scaling.decide(make_config(), nodes, [HEAD], scaling.Demand(shapes=[({"CPU": 1}, 2)]))
    assert d.launch == {}


def test_bin_packing_picks_the_type_that_packs_best_and_avoids_gpu_nodes():
    types = {"head": {"resources": {"CPU": 0}},
             "small": {"resources": {"CPU": 1}, "max_workers": 5},
             "big": {"resources": {"CPU": 4}, "max_workers": 5},
             "gpu": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 5}}
    cfg = make_config(available_node_types=types, max_workers=10)
    d = scaling.decide(cfg, [], [HEAD], scaling.Demand(shapes=[({"CPU": 1}, 8)]))
    assert d.launch == {"big": 2}  # fully used, fewer nodes; never the GPU type for CPU work
    d = scaling.decide(cfg, [], [HEAD], scaling.Demand(shapes=[({"CPU": 1, "GPU": 1}, 1)]))
    assert d.launch == {"gpu": 1}
    d = scaling.decide(cfg, [], [HEAD], scaling.Demand(shapes=[({"CPU": 2}, 1)]))
    assert d.launch == {"big": 1}


def test_strict_spread_group_gets_all_its_nodes_in_one_decision():
    pg = ("STRICT_SPREAD", [{"CPU": 1}] * 3)
    d = scaling.decide(make_config(), [], [HEAD], scaling.Demand(placement_groups=[pg]))
    assert d.launch == {"cpu": 3} and "STRICT_SPREAD" in d.launch_reasons["cpu"]
    # One node already free: two more.
    d = scaling.decide(make_config(), [running("a")], [HEAD], scaling.Demand(placement_groups=[pg]))
    assert d.launch == {"cpu": 2}
    # A group larger than max_workers allows launches nothing (it could never be placed whole).
    d = scaling.decide(make_config(max_workers=2), [], [HEAD], scaling.Demand(placement_groups=[pg]))
    assert d.launch == {} and "max_workers" in d.waiting[0][1]


def test_strict_pack_group_needs_one_node_that_holds_it_all():
    types = {"head": {"resources": {"CPU": 0}}, "cpu": {"resources": {"CPU": 1}}, "big": {"resources": {"CPU": 4}}}
    cfg = make_config(available_node_types=types)
    d = scaling.decide(cfg, [], [HEAD], scaling.Demand(placement_groups=[("STRICT_PACK", [{"CPU": 1}] * 3)]))
    assert d.launch == {"big": 1}
    d = scaling.decide(cfg, [], [HEAD], scaling.Demand(placement_groups=[("STRICT_PACK", [{"CPU": 3}] * 2)]))
    assert d.launch == {} and "STRICT_PACK" in d.infeasible[0][0]


def test_infeasible_shapes_are_named_and_launch_nothing():
    d = scaling.decide(make_config(), [], [HEAD], scaling.Demand(shapes=[({"GPU": 1}, 2), ({"CPU": 1}, 1)]))
    assert d.launch == {"cpu": 1}
    assert d.infeasible == [("{GPU: 1}", "no node type (and no node) has these resources")]
    # A shape an existing (unmanaged) node can run is not infeasible: it waits for that node.
    big_head = scaling.FixedNode("head", {"CPU": 8}, {"CPU": 0})
    d = scaling.decide(make_config(), [], [big_head], scaling.Demand(shapes=[({"CPU": 8}, 1)]))
    assert not d.infeasible and d.launch == {}


def test_upscaling_speed_limits_nodes_launching_at_once():
    cfg = make_config(max_workers=50, available_node_types={
        "head": {"resources": {"CPU": 0}}, "cpu": {"resources": {"CPU": 1}, "max_workers": 50}})
    d = scaling.decide(cfg, [], [HEAD], scaling.Demand(shapes=[({"CPU": 1}, 20)]), scaling.Limits(upscaling_initial_num_nodes=5))
    assert d.launch == {"cpu": 5} and "upscaling_speed" in d.waiting[0][1]
    nodes = [running(f"n{i}", free=0.0) for i in range(10)]
    d = scaling.decide(cfg, nodes, [HEAD], scaling.Demand(shapes=[({"CPU": 1}, 20)]), scaling.Limits(5))
    assert d.launch == {"cpu": 11}  # 1.0 * 11 running nodes
    slow = make_config(max_workers=50, upscaling_speed=0.5, available_node_types={
        "head": {"resources": {"CPU": 0}}, "cpu": {"resources": {"CPU": 1}, "max_workers": 50}})
    d = scaling.decide(slow, nodes, [HEAD], scaling.Demand(shapes=[({"CPU": 1}, 20)]), scaling.Limits(5))
    assert d.launch == {"cpu": 6}


def test_min_workers_are_kept_and_max_never_exceeded():
    types = {"head": {"resources": {"CPU": 0}}, "cpu": {"resources": {"CPU": 1}, "min_workers": 2, "max_workers": 3}}
    cfg = make_config(available_node_types=types)
    assert scaling.decide(cfg, [], [HEAD], scaling.Demand()).launch == {"cpu": 2}
    idle = [running("a", idle_s=1e6), running("b", idle_s=1e6)]
    d = scaling.decide(cfg, idle, [HEAD], scaling.Demand())
    assert d.launch == {} and d.terminate == []  # idle, but at min_workers
    over = [running(str(i), idle_s=i) for i in range(5)]
    d = scaling.decide(cfg, over, [HEAD], scaling.Demand(shapes=[({"CPU": 1}, 10)]))
    assert d.launch == {} and [pid for pid, _ in d.terminate] == ["4", "3"]
    assert "max_workers" in d.terminate[0][1]


# ------------------------------------------------------------------ scale down
def test_idle_nodes_end_after_the_timeout_unless_busy_or_holding_objects():
    cfg = make_config(idle_timeout_minutes=1, max_workers=5, available_node_types={
        "head": {"resources": {"CPU": 0}}, "cpu": {"resources": {"CPU": 1}, "max_workers": 5}})
    nodes = [running("idle", idle_s=61), running("young", idle_s=59), running("busy", free=0.0),
             running("objects", idle_s=600, holds_objects=True)]
    d = scaling.decide(cfg, nodes, [HEAD], scaling.Demand())
    assert d.terminate == [("idle", "idle for 61s (idle_timeout_minutes: 1)")]
    # Each idle node that stays says why.
    assert d.kept == [("objects", "holds 3 object(s) referenced elsewhere; ending it would lose them")]
    nodes[3].spilled_bytes = 3 * 2**20
    d = scaling.decide(cfg, nodes, [HEAD], scaling.Demand())
    assert d.kept == [("objects", "holds 3 object(s) referenced elsewhere and 3.0 MiB spilled to its disk; "
                                  "ending it would lose them")]
    # Queued demand that fits on the idle node keeps it.
    d = scaling.decide(cfg, nodes, [HEAD], scaling.Demand(shapes=[({"CPU": 1}, 1)]))
    assert d.terminate == [] and d.launch == {}
    assert dict(d.kept)["idle"] == "queued demand or request_resources bundles fit on it"
    # So does min_workers.
    cfg = make_config(idle_timeout_minutes=1, available_node_types={
        "head": {"resources": {"CPU": 0}}, "cpu": {"resources": {"CPU": 1}, "min_workers": 1}})
    d = scaling.decide(cfg, [running("idle", idle_s=61)], [HEAD], scaling.Demand())
    assert d.terminate == [] and d.kept == [("idle", "its type 'cpu' is at min_workers (1)")]


def test_request_resources_launches_at_once_and_keeps_its_nodes():
    cfg = make_config(idle_timeout_minutes=0.1)
    d = scaling.decide(cfg, [], [HEAD], scaling.Demand(requested=[{"CPU": 1}] * 2), scaling.Limits(upscaling_initial_num_nodes=1))
    assert d.launch == {"cpu": 2} and "request_resources" in d.launch_reasons["cpu"]
    nodes = [running("a", idle_s=100), running("b", idle_s=100), running("c", idle_s=100)]
    d = scaling.decide(cfg, nodes, [HEAD], scaling.Demand(requested=[{"CPU": 1}] * 2))
    assert [pid for pid, _ in d.terminate] == ["c"] and d.launch == {}
    # Requests count against total capacity: busy nodes satisfy them too.
    busy = [running("a", free=0.0), running("b", free=0.0)]
    assert scaling.decide(cfg, busy, [HEAD], scaling.Demand(requested=[{"CPU": 1}] * 2)).launch == {}


def test_broken_nodes_are_ended_with_their_reason():
    nodes = [launching("slow", age_s=61), running("dead"), running("stray", node_type="gone")]
    nodes[1].alive = False
    d = scaling.decide(make_config(), nodes, [HEAD], scaling.Demand(), scaling.Limits(node_start_timeout_s=60))
    reasons = dict(d.terminate)
    assert "did not join the cluster within 60s" in reasons["slow"]
    assert reasons["dead"] == "its node daemon died"
    assert "'gone' is not a worker type" in reasons["stray"]


def test_launch_backoff_doubles_and_resets():
    backoff = LaunchBackoff(1.0, 5.0)
    assert backoff.wait_s("cpu", 0.0) == 0.0
    assert [backoff.failed("cpu", 0.0) for _ in range(4)] == [1.0, 2.0, 4.0, 5.0]
    assert backoff.wait_s("cpu", 1.0) == 4.0 and backoff.wait_s("gpu", 1.0) == 0.0
    backoff.succeeded("cpu")
    assert backoff.wait_s("cpu", 1.0) == 0.0


# ------------------------------------------------------------------ status text
def test_status_text_shows_types_pending_failures_demands_and_events():
    nodes = [
        {"NodeID": "h" * 56, "Alive": True, "IsHead": True, "NodeManagerAddress": "127.0.0.1",
         "Resources": {"CPU": 0.0}, "AvailableResources": {}},
        {"NodeID": "w" * 56, "Alive": True, "NodeManagerAddress": "127.0.0.1",
         "Resources": {"CPU": 1.0}, "AvailableResources": {"CPU": 0.0}},
        {"NodeID": "d" * 56, "Alive": False, "NodeManagerAddress": "127.0.0.1", "DeathReason": "no heartbeat for 30s",
         "Resources": {}, "AvailableResources": {}},
        {"NodeID": "s" * 56, "Alive": False, "NodeManagerAddress": "127.0.0.1",
         "DeathReason": "its node daemon was stopped", "Resources": {}, "AvailableResources": {}},
    ]
    demand = {"nodes": [], "tasks": [[{"CPU": 1.0}, 4]], "actors": [],
              "placement_groups": [{"strategy": "STRICT_SPREAD", "bundles": [{"CPU": 1.0}] * 3}],
              "requested": [{"CPU": 1.0}, {"CPU": 1.0}]}
    autoscaler = {"head_node_type": "head", "active": {"cpu": ["w" * 56]},
                  "pending": [{"node_type": "cpu", "provider_id": "fake-1", "status": "launching"}],
                  "failed": [{"time": 0, "node_type": "cpu", "reason": "quota exceeded"}],
                  "infeasible": [["{GPU: 1}", "no node type has it"]], "waiting": [],
                  "kept": [["w" * 56, "cpu", "holds 2 object(s) referenced elsewhere; ending it would lose them"]],
                  "events": [{"time": 0, "kind": "scale_up", "message": "adding 1 cpu node(s): 4 queued"}],
                  "node_types": {"cpu": {"resources": {"CPU": 1}}}}
    text = format_status(status_document(nodes, demand, autoscaler))
    for line in (" 1 head", " 1 cpu", " fake-1: cpu, launching", "no heartbeat for 30s",
                 " cpu: LaunchFailed", "quota exceeded", " 1/1 CPU",
                 " {'CPU': 1.0}: 2 from request_resources()", " {'CPU': 1.0}: 4+ pending tasks/actors",
                 " {'CPU': 1.0} * 3 (STRICT_SPREAD): 1+ pending placement groups",
                 " {GPU: 1}: no node type has it", "scale_up: adding 1 cpu node(s)",
                 "Idle nodes kept past the idle timeout:\n wwwwwwwwwwww (cpu): holds 2 object(s) referenced elsewhere"):
        assert line in text, (line, text)
    assert "its node daemon was stopped" not in text  # a node ended on purpose is not a failure
    assert "Autoscaler: " not in text
    down = format_status(status_document(nodes, demand, {**autoscaler, "stopped": True, "restarting": True}))
    assert "Autoscaler: RESTARTING after it died (its last report is shown)" in down
    assert "Autoscaler: NOT RUNNING" in format_status(status_document(nodes, demand, {**autoscaler, "stopped": True}))
    plain = format_status(status_document(nodes[:1], None, None))
    assert " 1 node" in plain and "(no resource demands)" in plain and "autoscaler events" not in plain


# ------------------------------------------------------------------ the control service's side
def test_control_service_aggregates_demand_requests_drains_and_reports(tmp_path):
    import asyncio

    from ember.exceptions import ProtocolError
    from ember.gcs.server import GcsServer
    from tests.test_unit_gcs_tables import FakeConn, node_info

    async def scenario() -> None:
        gcs = GcsServer(str(tmp_path), "token")
        a, b = FakeConn(), FakeConn()
        via_wire(gcs).rpc_register_node(a, node_info(b"A" * 28))
        via_wire(gcs).rpc_register_node(b, node_info(b"B" * 28))
        via_wire(gcs).rpc_report(a, {"node_id": b"A" * 28, "available": {"CPU": 0}, "demand": [[{"CPU": 1.0}, 2]], "idle_s": 0})
        via_wire(gcs).rpc_report(b, {"node_id": b"B" * 28, "available": {"CPU": 2}, "demand": [[{"CPU": 1.0}, 1]], "idle_s": 9})
        demand = await via_wire(gcs).rpc_get_cluster_demand(a, {"wait_s": 5})  # new demand: no wait
        assert demand["tasks"] == [[{"CPU": 1.0}, 3]]
        assert {n["NodeID"][:2]: n["IdleSeconds"] for n in demand["nodes"]} == {"41": 0.0, "42": 9.0}
        # request_resources: checked, stored (a restarted control service keeps it), replaced by the next call.
        via_wire(gcs).rpc_request_resources(a, {"bundles": [{"CPU": 1}, {"GPU": 1}]})
        assert GcsServer(str(tmp_path), "token", gcs.storage).autoscaler.requested == [{"CPU": 1.0}, {"GPU": 1.0}]
        with pytest.raises(ValueError, match="non-negative"):
            via_wire(gcs).rpc_request_resources(a, {"bundles": [{"CPU": -1}]})
        with pytest.raises(ProtocolError, match="request_resources"):  # not a number: refused on arrival
            via_wire(gcs).rpc_request_resources(a, {"bundles": [{"CPU": "x"}]})
        # Draining: refused while the node has work; a drained node leaves the other nodes' views.
        assert via_wire(gcs).rpc_drain_node(a, {"node_id": b"A" * 28}) is False
        assert via_wire(gcs).rpc_drain_node(a, {"node_id": b"B" * 28}) is False  # it has queued demand
        via_wire(gcs).rpc_report(b, {"node_id": b"B" * 28, "available": {"CPU": 2}, "demand": [], "idle_s": 10})
        assert via_wire(gcs).rpc_drain_node(a, {"node_id": b"B" * 28}) is True
        assert [row[0] for row in via_wire(gcs).rpc_get_node_addresses(a, None)] == [b"A" * 28]
        assert ("refresh_view", None) in a.notified
        via_wire(gcs).rpc_drain_node(a, {"node_id": b"B" * 28, "drain": False})
        assert len(via_wire(gcs).rpc_get_node_addresses(a, None)) == 2
        # The autoscaler's report: its node types' shapes go to every node, and are withdrawn when it goes.
        scaler = FakeConn()
        via_wire(gcs).rpc_autoscaler_report(scaler, {"status": {"cluster_name": "c"}, "launchable": [{"CPU": 1}]})
        assert ("set_launchable", [{"CPU": 1.0}]) in b.notified
        assert via_wire(gcs).rpc_get_autoscaler_status(a, None)["cluster_name"] == "c"
        late = FakeConn()
        via_wire(gcs).rpc_register_node(late, node_info(b"C" * 28))
        assert ("set_launchable", [{"CPU": 1.0}]) in late.notified
        scaler.close()
        assert b.notified[-1] == ("set_launchable", None) and via_wire(gcs).rpc_get_autoscaler_status(a, None)["stopped"]
        with pytest.raises(ProtocolError, match="status"):
            via_wire(gcs).rpc_autoscaler_report(scaler, {"status": "not a dict"})

    asyncio.run(scenario())


# ------------------------------------------------------------------ supervision (control service side)
def test_supervisor_restarts_with_doubling_pauses_until_withdrawn(tmp_path, monkeypatch):
    """A dead autoscaler is started again from its recorded command; one that dies before reporting
    is restarted after twice the pause; a withdrawn command (``ember stop``) ends supervision."""
    import asyncio
    import subprocess
    import sys

    from ember._private import session
    from ember._private.background import BackgroundTasks
    from ember._private.config import reset_config
    from ember.gcs.autoscaler_supervisor import AutoscalerSupervisor

    monkeypatch.setenv("EMBER_autoscaler_restart_backoff_initial_s", "0.05")
    reset_config()
    (tmp_path / "logs").mkdir()
    (tmp_path / "pids").mkdir()
    marker = tmp_path / "starts"
    # Each start appends a line; the third one withdraws the command (as `ember stop` does) before exiting.
    script = (f"import os, sys; f = open({str(marker)!r}, 'a'); f.write('x'); f.close(); "
              f"n = len(open({str(marker)!r}).read()); "
              f"n >= 3 and os.unlink({str(tmp_path / 'autoscaler_restart_args.json')!r}); sys.exit(3)")
    session.write_autoscaler_restart_args(str(tmp_path), ["-c", script])
    events: list[tuple[str, str]] = []
    gave_up = []

    async def main() -> None:
        background = BackgroundTasks("test")
        done = asyncio.Event()

        def stopped() -> None:
            gave_up.append(True)
            done.set()

        supervisor = AutoscalerSupervisor(str(tmp_path), background, lambda k, m: events.append((k, m)), stopped)
        first = subprocess.Popen([sys.executable, "-c", "pass"])
        first.wait()
        assert supervisor.connection_closed(first.pid) and supervisor.restarting
        await asyncio.wait_for(done.wait(), 30)
        await background.close(1.0)
        assert not supervisor.restarting and supervisor.restarts == 3

    try:
        asyncio.run(main())
    finally:
        reset_config()
    kinds = [k for k, _ in events]
    assert kinds == ["autoscaler_died", "autoscaler_restarted"] * 3 + ["autoscaler_died", "autoscaler_stopped"]
    died = [m for k, m in events if k == "autoscaler_died"]
    assert died[0].endswith("exited; restarting it in 0.05s")  # not its child: no exit code
    assert [m.rsplit("in ", 1)[1] for m in died] == ["0.05s", "0.1s", "0.2s", "0.4s"]
    assert "exited with code 3" in died[1]
    assert session.read_pid_files(str(tmp_path))["autoscaler"] > 0 and gave_up == [True]
    # Nothing is supervised without a recorded command.
    assert not AutoscalerSupervisor(str(tmp_path), BackgroundTasks("t"), lambda k, m: None, lambda: None
                                    ).connection_closed(1)


def test_a_node_reports_as_demand_only_what_its_free_resources_cannot_hold():
    """A request the node's free resources hold waits only for a worker: not demand (on a node
    that just joined, the sending node's last report may still count it)."""
    from types import SimpleNamespace

    from ember._private import resources as res
    from ember.raylet.demand import queued_demand

    queue = [SimpleNamespace(resources=res.to_fixed(r)) for r in
             ({"CPU": 1}, {"CPU": 1}, {"CPU": 1, "pg_group_1": 1}, {"GPU": 1})]
    assert queued_demand(queue) == [[{"CPU": 1.0}, 2], [{"GPU": 1.0}, 1]]
    assert queued_demand(queue, res.to_fixed({"CPU": 1})) == [[{"CPU": 1.0}, 1], [{"GPU": 1.0}, 1]]
    assert queued_demand(queue, res.to_fixed({"CPU": 4, "GPU": 1})) == []
