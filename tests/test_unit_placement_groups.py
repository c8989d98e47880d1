"""The placement-group core and its shell, driven by events (no processes, sockets or sleeps).

``validate()`` runs after every step. Failure orders: a preparation refused, a node dying
mid-prepare and mid-commit (its late "ok" counts for nothing), removal during a round,
late answers of finished rounds, random interleavings.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from ember._private.background import BackgroundTasks
from ember.exceptions import ConnectionLost, ErrorCode, InvariantViolation, RemoteError
from ember.gcs import persistence as db
from ember.gcs.actor_lifecycle import NodeView
from ember.gcs.pg_lifecycle import (
    AccountBundle,
    CancelBundle,
    CommitBundle,
    KillGroupActors,
    Persist,
    PgState,
    PlacementGroupLifecycle,
    PrepareBundle,
    RemoveBundle,
    Wake,
    WarnUnplaceable,
)
from ember.gcs.placement_groups import PlacementGroupManager
from ember.gcs.server import ChangeSignal, NodeEntry
from ember.gcs.storage import InMemoryStorage

NODE_A, NODE_B, NODE_C = b"A" * 28, b"B" * 28, b"C" * 28


def node(node_id: bytes, cpus: float = 4) -> NodeView:
    return NodeView(node_id, {"CPU": cpus}, {"CPU": cpus})


def spec(n: int, bundles: int = 2, strategy: str = "PACK", cpus: float = 1, **extra: Any) -> dict[str, Any]:
    return {"pg_id": bytes([n]) * 18, "bundles": [{"CPU": cpus}] * bundles, "strategy": strategy,
            "job": b"j", **extra}


class Driver:
    def __init__(self) -> None:
        self.core = PlacementGroupLifecycle()

    def __getattr__(self, event: str) -> Any:
        method = getattr(self.core, event)

        def step(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            self.core.validate()
            return result

        return step

    def actions(self) -> list[Any]:
        return self.core.take_actions()

    def of(self, kind: type, actions: list[Any]) -> list[Any]:
        return [a for a in actions if isinstance(a, kind)]

    def prepare_all(self, nodes: list[NodeView]) -> list[CommitBundle]:
        """Schedule, answer every preparation ok; returns the commits asked."""
        self.schedule(nodes)
        for p in self.of(PrepareBundle, self.actions()):
            self.bundle_prepared(p.pg_id, p.round, p.index, True)
        return self.of(CommitBundle, self.actions())

    def place(self, s: dict[str, Any], nodes: list[NodeView]) -> None:
        self.create(s)
        self.actions()
        for c in self.prepare_all(nodes):
            self.bundle_committed(c.pg_id, c.round, c.index, True)
        assert self.core.groups[s["pg_id"]].state is PgState.CREATED
        self.actions()


@pytest.fixture
def d() -> Driver:
    return Driver()


def test_two_phase_placement(d: Driver) -> None:
    s = spec(1, bundles=2, strategy="STRICT_SPREAD")
    assert d.create(s) == {"pg_id": s["pg_id"]}
    assert d.actions() == [Persist(s["pg_id"])]
    d.schedule([node(NODE_A), node(NODE_B)])
    prepares = d.actions()
    assert {(p.index, p.node_id) for p in prepares} == {(0, NODE_A), (1, NODE_B)} or \
        {(p.index, p.node_id) for p in prepares} == {(0, NODE_B), (1, NODE_A)}
    assert all(isinstance(p, PrepareBundle) and p.resources == {"CPU": 1} for p in prepares)
    assert not d.core.waiting  # a round is in flight
    d.bundle_prepared(s["pg_id"], prepares[0].round, prepares[0].index, True)
    assert d.actions() == []  # waits for every preparation
    d.bundle_prepared(s["pg_id"], prepares[1].round, prepares[1].index, True)
    commits = d.actions()
    assert len(commits) == 2 and all(isinstance(c, CommitBundle) for c in commits)
    for c in commits:
        d.bundle_committed(c.pg_id, c.round, c.index, True)
    entry = d.core.groups[s["pg_id"]]
    assert entry.state is PgState.CREATED and set(entry.nodes) == {NODE_A, NODE_B}
    done = d.actions()
    assert Wake(s["pg_id"]) in done and Persist(s["pg_id"]) in done
    assert len(d.of(AccountBundle, done)) == 2
    assert entry.public()["bundles_to_node_id"].keys() == {0, 1}


def test_names_are_unique_until_removed(d: Driver) -> None:
    d.create(spec(1, name="g"))
    assert d.create(spec(1, name="g")) == {"pg_id": spec(1)["pg_id"]}  # a retry
    with pytest.raises(ValueError, match="already exists"):
        d.create(spec(2, name="g"))
    assert d.remove(spec(1)["pg_id"]) is True
    assert d.remove(spec(1)["pg_id"]) is False and d.remove(b"?" * 18) is False
    d.create(spec(3, name="g"))


def test_a_refused_preparation_cancels_the_others_and_waits(d: Driver) -> None:
    s = spec(1, bundles=3, strategy="SPREAD")
    d.create(s)
    d.actions()
    d.schedule([node(NODE_A), node(NODE_B), node(NODE_C)])
    prepares = d.actions()
    d.bundle_prepared(s["pg_id"], prepares[0].round, prepares[0].index, True)
    d.bundle_prepared(s["pg_id"], prepares[1].round, prepares[1].index, False)
    d.bundle_prepared(s["pg_id"], prepares[2].round, prepares[2].index, True)
    cancels = d.actions()
    assert {(c.index, c.node_id) for c in cancels} == {(prepares[0].index, prepares[0].node_id),
                                                       (prepares[2].index, prepares[2].node_id)}
    assert all(isinstance(c, CancelBundle) for c in cancels)
    assert d.core.waiting and d.core.groups[s["pg_id"]].state is PgState.PENDING
    # A late answer of the finished round changes nothing.
    d.bundle_prepared(s["pg_id"], prepares[0].round, prepares[0].index, True)
    assert d.actions() == []
    assert len(d.prepare_all([node(NODE_A), node(NODE_B), node(NODE_C)])) == 3  # next round


def test_a_node_dying_mid_commit_keeps_the_committed_bundles_and_places_the_rest(d: Driver) -> None:
    s = spec(1, bundles=2, strategy="SPREAD")
    d.create(s)
    commits = d.prepare_all([node(NODE_A), node(NODE_B)])
    on_a = next(c for c in commits if c.node_id == NODE_A)
    on_b = next(c for c in commits if c.node_id == NODE_B)
    d.bundle_committed(s["pg_id"], on_a.round, on_a.index, True)
    d.node_died(NODE_B)  # B's bundle fails now
    d.bundle_committed(s["pg_id"], on_b.round, on_b.index, True)  # its late "ok": nothing
    entry = d.core.groups[s["pg_id"]]
    assert entry.state is PgState.PENDING and entry.nodes[on_a.index] == NODE_A and entry.nodes[on_b.index] is None
    d.actions()
    d.schedule([node(NODE_A), node(NODE_C)])
    (again,) = d.actions()
    assert again.index == on_b.index
    d.bundle_prepared(s["pg_id"], again.round, again.index, True)
    (commit,) = d.actions()
    d.bundle_committed(s["pg_id"], commit.round, commit.index, True)
    assert entry.state is PgState.CREATED


def test_a_node_dying_mid_prepare_fails_the_round(d: Driver) -> None:
    s = spec(1, bundles=2, strategy="STRICT_SPREAD")
    d.create(s)
    d.actions()
    d.schedule([node(NODE_A), node(NODE_B)])
    prepares = d.actions()
    on_a = next(p for p in prepares if p.node_id == NODE_A)
    d.bundle_prepared(s["pg_id"], on_a.round, on_a.index, True)
    d.node_died(NODE_B)
    assert d.actions() == [CancelBundle(s["pg_id"], on_a.index, NODE_A)]
    assert d.core.waiting


def test_node_death_reschedules_a_created_group(d: Driver) -> None:
    s = spec(1, bundles=2, strategy="STRICT_SPREAD")
    d.place(s, [node(NODE_A), node(NODE_B)])
    d.node_died(NODE_A)
    entry = d.core.groups[s["pg_id"]]
    assert entry.state is PgState.RESCHEDULING and entry.nodes.count(None) == 1
    assert d.actions() == [Persist(s["pg_id"])]
    d.schedule([node(NODE_B)])  # STRICT_SPREAD: B holds a bundle already, so it waits
    assert d.actions() == [] and d.core.waiting
    d.schedule([node(NODE_B), node(NODE_C)])
    (prepare,) = d.actions()
    assert prepare.node_id == NODE_C


def test_a_group_no_node_shape_can_hold_warns_once(d: Driver) -> None:
    s = spec(1, bundles=1, cpus=8)
    d.create(s)
    d.actions()
    d.schedule([node(NODE_A)])
    assert d.actions() == [WarnUnplaceable(s["pg_id"])]
    d.schedule([node(NODE_A)])
    assert d.actions() == []
    assert d.of(PrepareBundle, (d.schedule([node(NODE_A), node(NODE_B, cpus=8)]), d.actions())[1])


def test_strict_pack_places_the_whole_group_again(d: Driver) -> None:
    s = spec(1, bundles=2, strategy="STRICT_PACK")
    d.restore([{"spec": s, "state": "RESCHEDULING", "nodes": [NODE_A, None]}])  # a partial loss
    d.schedule([node(NODE_B)])
    actions = d.actions()
    assert RemoveBundle(s["pg_id"], 0, NODE_A) in actions
    assert {p.index for p in d.of(PrepareBundle, actions)} == {0, 1}


def test_removal_during_a_round_releases_what_the_round_reserved(d: Driver) -> None:
    s = spec(1, bundles=2, strategy="SPREAD")
    d.create(s)
    commits = d.prepare_all([node(NODE_A), node(NODE_B)])
    assert d.remove(s["pg_id"]) is True
    assert KillGroupActors(s["pg_id"]) in d.actions()
    d.bundle_committed(s["pg_id"], commits[0].round, commits[0].index, True)
    d.bundle_committed(s["pg_id"], commits[1].round, commits[1].index, False)
    assert d.actions() == [RemoveBundle(s["pg_id"], commits[0].index, commits[0].node_id)]
    # Removed while preparing: the prepared reservations are cancelled.
    t = spec(2, bundles=1)
    d.create(t)
    d.actions()
    d.schedule([node(NODE_A)])
    (prepare,) = d.actions()
    d.remove(t["pg_id"])
    d.actions()
    d.bundle_prepared(t["pg_id"], prepare.round, prepare.index, True)
    assert d.actions() == [CancelBundle(t["pg_id"], 0, NODE_A)]


def test_removal_of_a_created_group_and_job_end(d: Driver) -> None:
    mine, detached = spec(1, job=b"j1"), spec(2, job=b"j1", lifetime="detached")
    d.place(mine, [node(NODE_A)])
    d.place(detached, [node(NODE_A)])
    d.job_finished(b"j1")
    actions = d.actions()
    assert len(d.of(RemoveBundle, actions)) == 2
    assert all(not a.reserve for a in d.of(AccountBundle, actions))
    assert d.core.groups[mine["pg_id"]].removed and not d.core.groups[detached["pg_id"]].removed


def test_groups_in_one_pass_do_not_share_free_room(d: Driver) -> None:
    d.create(spec(1, bundles=1, cpus=3))
    d.create(spec(2, bundles=1, cpus=3))
    d.actions()
    d.schedule([node(NODE_A, cpus=4), node(NODE_B, cpus=4)])
    prepares = d.of(PrepareBundle, d.actions())
    assert {p.node_id for p in prepares} == {NODE_A, NODE_B}


def test_restore(d: Driver) -> None:
    created, pending, removed = spec(1, name="c"), spec(2), spec(3, name="r")
    d.restore([
        {"spec": created, "state": "CREATED", "nodes": [NODE_A, NODE_A]},
        {"spec": pending, "state": "RESCHEDULING", "nodes": [NODE_A, None]},
        {"spec": removed, "state": "REMOVED", "nodes": [NODE_A, NODE_B]},
    ])
    assert set(d.core.named) == {("", "c")} and d.core.waiting
    assert d.core.groups[removed["pg_id"]].nodes == [None, None]


@pytest.mark.parametrize("corrupt", [
    lambda e: e.nodes.__setitem__(0, None),  # CREATED with a bundle unplaced
    lambda e: e.nodes.__setitem__(1, NODE_C),  # STRICT_PACK across nodes
    lambda e: e.nodes.append(NODE_A),  # more slots than bundles
])
def test_validate_finds_broken_invariants(d: Driver, corrupt: Any) -> None:
    s = spec(1, strategy="STRICT_PACK")
    d.place(s, [node(NODE_A)])
    corrupt(d.core.groups[s["pg_id"]])
    with pytest.raises(InvariantViolation, match="placement groups"):
        d.core.validate()


@pytest.mark.parametrize("seed", range(10))
def test_random_orders_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    d = Driver()
    nodes = [node(NODE_A), node(NODE_B), node(NODE_C)]
    pending: list[Any] = []
    for step in range(250):
        roll = rng.random()
        if roll < 0.15 or not d.core.groups:
            d.create(spec(step % 250 + 1, bundles=rng.randint(1, 3),
                          strategy=rng.choice(["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"])))
        elif roll < 0.3:
            d.schedule(nodes)
        elif roll < 0.75 and pending:
            a = pending.pop(rng.randrange(len(pending)))
            answer = d.bundle_prepared if isinstance(a, PrepareBundle) else d.bundle_committed
            answer(a.pg_id, a.round, a.index, rng.random() < 0.85)
        elif roll < 0.79:
            d.remove(rng.choice(list(d.core.groups)))
        elif roll < 0.87:
            d.node_died(rng.choice([NODE_A, NODE_B, NODE_C]))  # node ids are reused: stale answers
        elif roll < 0.88:
            d.job_finished(b"j")
        else:
            d.schedule(nodes)
        pending += [a for a in d.actions() if isinstance(a, (PrepareBundle, CommitBundle))]


# ============================================================================ the async shell
class FakeConn:
    def __init__(self, refuse: set[str] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.refuse = refuse or set()

    async def call(self, method: str, payload: Any, timeout: float | None = None) -> Any:
        self.calls.append((method, payload))
        if method in self.refuse:
            raise RemoteError(ErrorCode.BAD_REQUEST, "no room")
        return True


class FakeActors:
    def __init__(self) -> None:
        self.actors: dict[bytes, Any] = {}
        self.killed: list[bytes] = []

    def kill(self, actor_id: bytes, no_restart: bool, cause: str) -> bool:
        self.killed.append(actor_id)
        return True


def test_the_shell_places_waits_and_removes() -> None:
    async def main() -> None:
        gcs: Any = type("Gcs", (), {})()
        gcs.storage, gcs.background, gcs.cluster_changed = InMemoryStorage(), BackgroundTasks("t"), ChangeSignal()
        gcs.actor_manager = FakeActors()
        gcs.actor_manager.actors[b"a"] = type("E", (), {"spec": {"pg": spec(1)["pg_id"]}, "actor_id": b"a"})()
        conn = FakeConn()
        gcs.nodes = {NODE_A: NodeEntry({"node_id": NODE_A, "address": ["h", 1], "resources": {"CPU": 4}}, conn)}
        manager = PlacementGroupManager(gcs)
        try:
            manager.create(spec(1, name="g"))
            assert await asyncio.wait_for(manager.wait_ready(spec(1)["pg_id"]), 5) == "CREATED"
            assert [m for m, _ in conn.calls] == ["prepare_bundle"] * 2 + ["commit_bundle"] * 2
            assert gcs.nodes[NODE_A].available["CPU"] == 2.0  # counted until the next report
            assert manager.get_by_name("g", "")["state"] == "CREATED"  # type: ignore[index]
            assert db.unpack(gcs.storage.get("pgs", spec(1)["pg_id"]))["state"] == "CREATED"
            assert await manager.remove(spec(1)["pg_id"]) is True
            assert gcs.actor_manager.killed == [b"a"] and gcs.nodes[NODE_A].available["CPU"] == 4.0
            assert await manager.wait_ready(spec(1)["pg_id"]) == "REMOVED"
            # A node that refuses: the group waits (PENDING) and the prepared one is cancelled.
            conn.refuse = {"commit_bundle"}
            manager.create(spec(2, bundles=1))
            for _ in range(50):
                await asyncio.sleep(0)
            assert manager.table()[spec(2)["pg_id"].hex()]["state"] == "PENDING"
            manager.on_node_died(NODE_A)
            manager.core.validate()
        finally:
            await gcs.background.close(1.0)

    asyncio.run(main())


def test_the_shell_reports_a_lost_node_as_a_failed_bundle() -> None:
    async def main() -> None:
        gcs: Any = type("Gcs", (), {})()
        gcs.storage, gcs.background, gcs.cluster_changed = InMemoryStorage(), BackgroundTasks("t"), ChangeSignal()
        gcs.nodes = {}
        manager = PlacementGroupManager(gcs)
        try:
            with pytest.raises(ConnectionLost):
                await manager._node_call(NODE_A, "prepare_bundle", {})
            assert manager.table() == {} and await manager.wait_ready(b"?") == "REMOVED"
        finally:
            await gcs.background.close(1.0)

    asyncio.run(main())
