"""Distributed reference counting against a model (hypothesis stateful testing).

A ``RuleBasedStateMachine`` drives one real cluster (the module's shared
cluster, 2 CPUs) through random sequences of: creating values (a task returning
a large array, ``put``, ``put(_owner=actor)``), passing them to tasks (top level
or nested, dropping the driver's ref while the task is pending), nesting them
in containers (a ``put``, a ``put`` owned by an actor, a task's return value;
lists, dicts, user classes), storing them in actors' state (the refs
themselves, or the refs found inside a container) and dropping them from it,
handing refs from one actor to another, keeping zero-copy arrays read from
values (while their refs go away), deleting the driver's refs, SIGKILLing a
borrower (an actor holding refs) and SIGKILLing an owner (an actor that
``put`` values and handed out refs).

The model knows which values are reachable: from the driver's refs and the
actors' state, through the containers that are not lost. After every step:

* every reachable value reads back with the right contents, from the driver
  (directly, through containers, or through refs an actor hands back) and from
  the actors that hold it; a value whose owner was killed raises
  ``OwnerDiedError`` (an ``ObjectLostError``) within seconds, never hangs;
  arrays read earlier keep their contents (store files are recycled only
  once no reader maps them);
* once the cluster is quiet, exactly the reachable values are in the store (by
  file and by used bytes), this driver tracks exactly the reachable values it
  owns, and the owner actor owns exactly its reachable values.

Every example gets fresh actors (killed in ``teardown``); all examples share
the cluster. ``EMBER_MODEL_EXAMPLES`` / ``EMBER_MODEL_STEPS`` run it longer.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import psutil
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import ember
from ember._private import runtime
from ember._private.test_utils import wait_for_condition
from ember.exceptions import ObjectLostError, OwnerDiedError

sys.path.insert(0, os.path.dirname(__file__))
from memory_helpers import (  # noqa: E402
    SHAPES,
    build,
    describe,
    digest,
    expected_digest,
    inner_refs,
    object_files,
    pattern,
    store_stats,
)

#: Value sizes in uint32 elements: 256 KiB, 1 MiB and 1.2 MiB (1 MiB and up: recycled store files).
SIZES = (64 * 1024, 256 * 1024, 300 * 1024)
MAX_VALUES = 14  # values alive at once, so that a step stays quick
EXAMPLES = int(os.environ.get("EMBER_MODEL_EXAMPLES", "15"))
STEPS = int(os.environ.get("EMBER_MODEL_STEPS", "25"))


# ============================================================================ remote code
@ember.remote
def make(seed: int, n: int) -> Any:
    return pattern(seed, n)


@ember.remote
def digest_of(x: Any) -> tuple[int, int]:
    return digest(x)


@ember.remote
def digest_nested(refs: list[Any]) -> list[tuple[int, int]]:
    return [digest(ember.get(r, timeout=60)) for r in refs]


@ember.remote
def wrap(shape: str, refs: list[Any]) -> Any:
    return build(shape, list(refs))


@ember.remote(max_restarts=0)
class ModelHolder:
    def __init__(self) -> None:
        self.held: dict[str, list[Any]] = {}

    def hold(self, key: str, refs: list[Any]) -> int:
        self.held[key] = list(refs)
        return len(refs)

    def hold_inner(self, key: str, container: list[Any]) -> list[str]:
        self.held[key] = inner_refs(ember.get(container[0], timeout=60))
        return [r.hex() for r in self.held[key]]

    def give(self, key: str, other: Any, new_key: str) -> int:
        """Hand the refs held under ``key`` to another actor (a borrower passing refs on)."""
        return ember.get(other.hold.remote(new_key, self.held[key]), timeout=60)

    def drop(self, key: str) -> bool:
        return self.held.pop(key, None) is not None

    def refs_of(self, key: str) -> list[Any]:
        return self.held[key]

    def check(self) -> dict[str, list[Any]]:
        return {key: [describe(r) for r in refs] for key, refs in self.held.items()}

    def pid(self) -> int:
        return os.getpid()


@ember.remote(max_restarts=0)
class ModelOwner:
    def owned(self) -> list[str]:
        snap = runtime.core_worker().reference_counter.snapshot()
        return sorted(oid.hex() for oid, (_l, _s, owned) in snap.items() if owned and len(oid) != 16)

    def pid(self) -> int:
        return os.getpid()


# ============================================================================ the model
@dataclass
class Value:
    vid: int
    hex: str
    owner: str  # "driver" or the owner actor's name
    kind: str  # "data" or "container"
    seed: int = 0
    n: int = 0
    children: list[int] = field(default_factory=list)
    lost: bool = False

    def expected(self, values: dict[int, Value]) -> tuple[str, Any]:
        """What reading it must give (as ``describe`` says)."""
        if self.lost:
            return "lost", "OwnerDiedError"
        if self.kind == "data":
            return "data", expected_digest(self.seed, self.n)
        return "container", [values[c].hex for c in self.children]


@dataclass
class Actor:
    handle: Any
    name: str
    pid: int
    held: dict[str, list[int]] = field(default_factory=dict)


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _sigkill(actor: Actor) -> None:
    os.kill(actor.pid, signal.SIGKILL)
    wait_for_condition(lambda: _dead(actor.pid), timeout=15)


class RefcountModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.worker = runtime.core_worker()
        self.store_dir = self.worker.store_dir
        self.values: dict[int, Value] = {}
        self.refs: dict[int, Any] = {}  # the driver's refs
        self.next_id = 0
        self.next_key = 0
        self.generation = 0
        self.holders = [self._new_holder(), self._new_holder()]
        self.owner = self._new_owner()
        #: Arrays read zero-copy and kept (vid, array): valid even once their value is freed.
        self.views: list[tuple[int, Any]] = []

    # ------------------------------------------------------------------ actors
    def _name(self, kind: str) -> str:
        self.generation += 1
        return f"{kind}-{self.generation}"

    def _new_holder(self) -> Actor:
        handle = ModelHolder.remote()
        return Actor(handle, self._name("holder"), ember.get(handle.pid.remote(), timeout=60))

    def _new_owner(self) -> Actor:
        handle = ModelOwner.remote()
        return Actor(handle, self._name("owner"), ember.get(handle.pid.remote(), timeout=60))

    # ------------------------------------------------------------------ model helpers
    def _add(self, ref: Any, **kw: Any) -> int:
        self.next_id += 1
        vid = self.next_id
        self.values[vid] = Value(vid, ref.hex(), **kw)
        self.refs[vid] = ref
        return vid

    def _reachable(self) -> set[int]:
        stack = list(self.refs) + [v for h in self.holders for vids in h.held.values() for v in vids]
        seen: set[int] = set()
        while stack:
            vid = stack.pop()
            if vid in seen:
                continue
            seen.add(vid)
            value = self.values[vid]
            if value.kind == "container" and not value.lost:
                stack.extend(value.children)
        return seen

    def _live_count(self) -> int:
        return len([v for v in self._reachable() if not self.values[v].lost])

    def _held_by_driver(self, usable: bool = True, kind: str | None = None) -> list[int]:
        return sorted(
            vid for vid in self.refs
            if (not usable or not self.values[vid].lost) and (kind is None or self.values[vid].kind == kind)
        )

    # ================================================================== rules: creating values
    @precondition(lambda self: self._live_count() < MAX_VALUES)
    @rule(n=st.sampled_from(SIZES), seed=st.integers(1, 10**6))
    def create_by_task(self, n: int, seed: int) -> None:
        self._add(make.remote(seed, n), owner="driver", kind="data", seed=seed, n=n)

    @precondition(lambda self: self._live_count() < MAX_VALUES)
    @rule(n=st.sampled_from(SIZES), seed=st.integers(1, 10**6))
    def put_by_driver(self, n: int, seed: int) -> None:
        self._add(ember.put(pattern(seed, n)), owner="driver", kind="data", seed=seed, n=n)

    @precondition(lambda self: self._live_count() < MAX_VALUES)
    @rule(n=st.sampled_from(SIZES), seed=st.integers(1, 10**6))
    def put_owned_by_actor(self, n: int, seed: int) -> None:
        ref = ember.put(pattern(seed, n), _owner=self.owner.handle)
        self._add(ref, owner=self.owner.name, kind="data", seed=seed, n=n)

    # ================================================================== rules: tasks
    @precondition(lambda self: self._held_by_driver(kind="data"))
    @rule(data=st.data(), nested=st.booleans(), drop=st.booleans())
    def pass_to_task(self, data: st.DataObject, nested: bool, drop: bool) -> None:
        vid = data.draw(st.sampled_from(self._held_by_driver(kind="data")), label="value")
        value = self.values[vid]
        ref = self.refs[vid]
        result = digest_nested.remote([ref]) if nested else digest_of.remote(ref)
        del ref
        if drop:
            del self.refs[vid]  # only the pending task holds it now (unless reachable otherwise)
        got = ember.get(result, timeout=60)
        assert (got[0] if nested else got) == expected_digest(value.seed, value.n)

    # ================================================================== rules: nesting
    def _draw_children(self, data: st.DataObject) -> list[int]:
        return data.draw(st.lists(st.sampled_from(self._held_by_driver()), min_size=1, max_size=3, unique=True), label="children")

    @precondition(lambda self: self._held_by_driver() and self._live_count() < MAX_VALUES)
    @rule(data=st.data(), shape=st.sampled_from(SHAPES), by=st.sampled_from(["put", "actor_put", "task_return"]))
    def nest(self, data: st.DataObject, shape: str, by: str) -> None:
        children = self._draw_children(data)
        refs = [self.refs[c] for c in children]
        if by == "put":
            ref, owner = ember.put(build(shape, refs)), "driver"
        elif by == "actor_put":
            ref, owner = ember.put(build(shape, refs), _owner=self.owner.handle), self.owner.name
        else:
            ref, owner = wrap.remote(shape, refs), "driver"
        del refs
        self._add(ref, owner=owner, kind="container", children=children)

    # ================================================================== rules: actors' state
    def _key(self) -> str:
        self.next_key += 1
        return f"k{self.next_key}"

    @precondition(lambda self: self._held_by_driver())
    @rule(data=st.data(), which=st.integers(0, 1))
    def store_in_actor(self, data: st.DataObject, which: int) -> None:
        vids = self._draw_children(data)
        holder, key = self.holders[which], self._key()
        refs = [self.refs[v] for v in vids]
        assert ember.get(holder.handle.hold.remote(key, refs), timeout=60) == len(vids)
        holder.held[key] = vids

    @precondition(lambda self: self._held_by_driver(kind="container"))
    @rule(data=st.data(), which=st.integers(0, 1))
    def store_inner_refs_in_actor(self, data: st.DataObject, which: int) -> None:
        vid = data.draw(st.sampled_from(self._held_by_driver(kind="container")), label="container")
        holder, key = self.holders[which], self._key()
        got = ember.get(holder.handle.hold_inner.remote(key, [self.refs[vid]]), timeout=60)
        children = self.values[vid].children
        assert got == [self.values[c].hex for c in children]
        holder.held[key] = list(children)

    @precondition(lambda self: any(h.held for h in self.holders))
    @rule(data=st.data())
    def pass_between_actors(self, data: st.DataObject) -> None:
        source = data.draw(st.integers(0, 1), label="from")
        giver, taker = self.holders[source], self.holders[1 - source]
        if not giver.held:
            giver, taker = taker, giver
        key = data.draw(st.sampled_from(sorted(giver.held)), label="key")
        new_key = self._key()
        assert ember.get(giver.handle.give.remote(key, taker.handle, new_key), timeout=60) == len(giver.held[key])
        taker.held[new_key] = list(giver.held[key])

    @precondition(lambda self: any(h.held for h in self.holders))
    @rule(data=st.data())
    def drop_from_actor(self, data: st.DataObject) -> None:
        holder = data.draw(st.sampled_from([h for h in self.holders if h.held]), label="holder")
        key = data.draw(st.sampled_from(sorted(holder.held)), label="key")
        assert ember.get(holder.handle.drop.remote(key), timeout=60)
        del holder.held[key]

    # ================================================================== rules: the driver's refs
    @precondition(lambda self: self.refs)
    @rule(data=st.data())
    def delete_driver_ref(self, data: st.DataObject) -> None:
        vid = data.draw(st.sampled_from(sorted(self.refs)), label="value")
        del self.refs[vid]

    # ================================================================== rules: zero-copy views
    @precondition(lambda self: self._held_by_driver(kind="data") and len(self.views) < 4)
    @rule(data=st.data())
    def keep_a_view(self, data: st.DataObject) -> None:
        vid = data.draw(st.sampled_from(self._held_by_driver(kind="data")), label="value")
        self.views.append((vid, ember.get(self.refs[vid], timeout=60)))

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def drop_a_view(self, data: st.DataObject) -> None:
        self.views.pop(data.draw(st.integers(0, len(self.views) - 1), label="view"))

    # ================================================================== rules: deaths
    @rule(which=st.integers(0, 1))
    def kill_borrower(self, which: int) -> None:
        _sigkill(self.holders[which])
        self.holders[which] = self._new_holder()

    @precondition(lambda self: any(v.owner == self.owner.name for v in self.values.values()))
    @rule()
    def kill_owner(self) -> None:
        dead = self.owner
        _sigkill(dead)
        lost = [v for v in self.values.values() if v.owner == dead.name]
        for value in lost:
            value.lost = True
        # The node frees what the dead owner stored (a reader must not find a stale copy).
        wait_for_condition(lambda: not {v.hex for v in lost} & object_files(self.store_dir), timeout=15)
        self.owner = self._new_owner()

    # ================================================================== invariants
    @invariant()
    def reachable_values_read_back(self) -> None:
        reachable = self._reachable()
        refs: dict[int, Any] = {vid: ref for vid, ref in self.refs.items()}
        # Refs the actors hold, handed back to the driver (a borrower returning refs).
        for holder in self.holders:
            for key, vids in holder.held.items():
                if any(v not in refs for v in vids):
                    got = ember.get(holder.handle.refs_of.remote(key), timeout=60)
                    assert [r.hex() for r in got] == [self.values[v].hex for v in vids]
                    for v, r in zip(vids, got):
                        refs.setdefault(v, r)
        # Refs found inside containers.
        queue = list(refs)
        while queue:
            vid = queue.pop()
            value = self.values[vid]
            if value.kind != "container" or value.lost:
                continue
            for child, ref in zip(value.children, inner_refs(ember.get(refs[vid], timeout=60))):
                if child not in refs:
                    refs[child] = ref
                    queue.append(child)
        assert set(refs) == reachable
        for vid in sorted(reachable):
            value = self.values[vid]
            start = time.monotonic()
            if value.lost:
                # (except/as, not pytest.raises: its traceback would keep the refs alive in a cycle)
                try:
                    ember.get(refs[vid], timeout=30)
                    raise AssertionError(f"value {vid} of a dead owner was read")
                except OwnerDiedError as exc:
                    assert isinstance(exc, ObjectLostError) and value.hex in str(exc)
                assert time.monotonic() - start < 10, "OwnerDiedError took too long"
            else:
                assert describe(refs[vid]) == value.expected(self.values), f"value {vid} ({value})"
        refs.clear()
        # Arrays read earlier keep their contents, even when their value was freed since and
        # its store file recycled for newer values.
        for vid, array in self.views:
            value = self.values[vid]
            assert digest(array) == expected_digest(value.seed, value.n), f"view of value {vid} changed"
        # The actors read what they hold themselves.
        for holder in self.holders:
            seen = ember.get(holder.handle.check.remote(), timeout=60)
            expected = {key: [self.values[v].expected(self.values) for v in vids] for key, vids in holder.held.items()}
            assert seen == expected, holder.name

    @invariant()
    def unreachable_values_are_freed(self) -> None:
        gc.collect()  # refs caught in reference cycles (e.g. tracebacks) are this process's business
        reachable = self._reachable()
        live = {vid for vid in reachable if not self.values[vid].lost}
        in_store = {self.values[vid].hex for vid in live}
        mine = {bytes.fromhex(v.hex): v.vid in reachable for v in self.values.values() if v.owner == "driver"}
        owner_live = sorted(self.values[vid].hex for vid in live if self.values[vid].owner == self.owner.name)
        state: dict[str, Any] = {}

        def matches_model() -> bool:
            files = object_files(self.store_dir)
            stats = store_stats()
            state.update(files=files, stats=stats)
            if files != in_store or stats["objects"] != len(in_store) or stats["spilled_objects"]:
                return False
            if stats["used"] != sum(os.path.getsize(os.path.join(self.store_dir, h)) for h in files):
                return False
            counter = self.worker.reference_counter
            if any(counter.has_reference(oid) != want for oid, want in mine.items()):
                return False
            state["owner"] = ember.get(self.owner.handle.owned.remote(), timeout=60)
            return state["owner"] == owner_live

        try:
            wait_for_condition(matches_model, timeout=20)
        except RuntimeError:
            files = state.get("files", set())
            names = {v.hex: v.vid for v in self.values.values()}
            raise AssertionError(
                f"store does not match the model: unexpected {[names.get(h, h) for h in files - in_store]}, "
                f"missing {[names[h] for h in in_store - files]}, stats {state.get('stats')}, "
                f"owner owns {state.get('owner')} (expected {owner_live})"
            ) from None

    # ================================================================== teardown
    def teardown(self) -> None:
        """End the example's actors and refs; everything it stored must be freed."""
        hexes = {v.hex for v in self.values.values()}
        self.refs.clear()
        self.views.clear()
        for actor in [*self.holders, self.owner]:
            ember.kill(actor.handle)
        for actor in [*self.holders, self.owner]:
            wait_for_condition(lambda a=actor: _dead(a.pid), timeout=15)
        self.holders = []
        gc.collect()
        wait_for_condition(lambda: not hexes & object_files(self.store_dir), timeout=20)
        counter = self.worker.reference_counter
        try:
            wait_for_condition(lambda: not any(counter.has_reference(bytes.fromhex(h)) for h in hexes), timeout=20)
        except RuntimeError:
            snap, borrowed = counter.snapshot(), counter.borrower_counts()
            left = {
                vid: (snap.get(bytes.fromhex(v.hex)), borrowed.get(bytes.fromhex(v.hex), 0), v.owner, v.kind)
                for vid, v in self.values.items() if bytes.fromhex(v.hex) in snap
            }
            raise AssertionError(f"this driver still tracks values after the example: {left}") from None


def test_reference_counting_matches_the_model(ember_shared):
    before = store_stats()
    # Every step ends with gc.collect() (refs in cycles must go before the store is compared
    # with the model). Objects that exist before the first example (pytest, hypothesis, numpy,
    # the runtime) hold no ref of the test: frozen, a full collection no longer walks them
    # (it took ~0.4 s per step on a loaded machine, most of the test's time).
    gc.freeze()
    try:
        run_state_machine_as_test(
            RefcountModel,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        gc.unfreeze()
    wait_for_condition(lambda: store_stats()["used"] == before["used"], timeout=20)
